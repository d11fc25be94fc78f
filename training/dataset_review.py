"""What a dry run tells a person about the prepared images before they pay for a training:
warnings they can act on (too few photos, near-duplicates, photos smaller than the training
size), and a small thumbnail of each crop and mask to look at."""

from __future__ import annotations

import io
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
THUMBNAIL_QUALITY = 85


def review_warnings(
    images: list[Path], sources: list[str], upscaled: list[bool], resolution: int
) -> list[str]:
    """Warnings about the prepared crops `images` (their upload names `sources`; `upscaled`:
    which were smaller than their training size)."""
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
    return warnings


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
