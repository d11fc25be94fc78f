"""What a dry run tells a person about the prepared images before they pay for a training:
warnings they can act on (too few photos, near-duplicates, photos smaller than the training
size, captions that name different subjects), and a small thumbnail of each crop and mask to
look at."""

from __future__ import annotations

import io
import re
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

# docs/training-data.md: a good set for a subject is 5-20 photos.
MIN_PHOTOS = 5
# Two crops whose 16x16 colour thumbnails differ by less than this mean absolute difference
# (0-1 scale) are the same photo: a JPEG re-save or a slight resize of one photo differs by
# about 0.01 there; two shots of one subject in other light or places by 0.05 and more.
DUPLICATE_DIFFERENCE = 0.02
FINGERPRINT_SIDE = 16
THUMBNAIL_SIDE = 256
# The words a caption names its main subject by (a captioner writes "a man in a suit", "a dog on
# the grass"), by kind: a subject LoRA learns one, so photos of two kinds are mixed subjects.
SUBJECT_KINDS = {
    "a person": ("man", "woman", "boy", "girl", "person", "child", "baby", "lady", "kid"),
    "a dog": ("dog", "puppy"),
    "a cat": ("cat", "kitten"),
    "a bird": ("bird",),
    "a horse": ("horse",),
    "a car": ("car",),
}
KIND_OF_WORD = {word: kind for kind, words in SUBJECT_KINDS.items() for word in words}
# A kind counts when it is the main subject of at least this share of the photos (and of two):
# one stray caption is a captioner's mistake, not a second subject.
MIXED_SHARE = 0.2
THUMBNAIL_QUALITY = 85


def review_warnings(
    images: list[Path],
    sources: list[str],
    upscaled: list[bool],
    resolution: int,
    captions: list[str] | None = None,
) -> list[str]:
    """Warnings about the prepared crops `images` (their upload names `sources`; `upscaled`:
    which were smaller than their training size; `captions`: given for a subject, whose
    photos should show one)."""
    warnings = []
    if len(images) < MIN_PHOTOS:
        warnings.append(
            f"Only {len(images)} photo(s): a subject trains best from {MIN_PHOTOS}-20 photos "
            "from different angles, places and light."
        )
    for first, second in _near_duplicates(images):
        warnings.append(
            f"{sources[first]} and {sources[second]} are nearly the same photo: keep one, or "
            "add a different shot (duplicates weigh one view twice)."
        )
    small = [source for source, was_small in zip(sources, upscaled, strict=True) if was_small]
    if small:
        warnings.append(
            f"{len(small)} photo(s) smaller than the {resolution}px training size were "
            f"upscaled ({', '.join(small[:5])}{', …' if len(small) > 5 else ''}): upscaling "
            "adds no detail, prefer larger originals."
        )
    if captions is not None:
        warnings += _mixed_subjects(captions, sources)
    return warnings


def _mixed_subjects(captions: list[str], sources: list[str]) -> list[str]:
    """A warning when the captions' main subjects (the first subject word of each) are of two
    kinds or more, each in a fair share of the photos."""
    photos_of: dict[str, list[str]] = {}
    for caption, source in zip(captions, sources, strict=True):
        words = re.findall(r"[a-z]+", caption.lower())
        kind = next((KIND_OF_WORD[w] for w in words if w in KIND_OF_WORD), None)
        if kind is not None:
            photos_of.setdefault(kind, []).append(source)
    least = max(2, MIXED_SHARE * len(captions))
    kinds = Counter({kind: len(found) for kind, found in photos_of.items() if len(found) >= least})
    if len(kinds) < 2:
        return []
    named = "; ".join(
        f"{kind} in {count} ({', '.join(photos_of[kind][:3])}{', …' if count > 3 else ''})"
        for kind, count in kinds.most_common()
    )
    return [
        f"The captions name different subjects: {named}. A subject trains on one: keep the "
        "photos of yours, or train one model per subject."
    ]


def _near_duplicates(images: list[Path]) -> list[tuple[int, int]]:
    prints = [_fingerprint(path) for path in images]
    return [
        (i, j)
        for i, j in combinations(range(len(prints)), 2)
        if float(np.abs(prints[i] - prints[j]).mean()) < DUPLICATE_DIFFERENCE
    ]


def _fingerprint(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        small = image.convert("RGB").resize((FINGERPRINT_SIDE, FINGERPRINT_SIDE), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def thumbnail(path: Path, mask: bool = False) -> bytes:
    """A small JPEG of a crop, or a small greyscale PNG of a mask."""
    with Image.open(path) as image:
        small = image.convert("L" if mask else "RGB")
        small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    if mask:
        small.save(buffer, format="PNG")
    else:
        small.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()
