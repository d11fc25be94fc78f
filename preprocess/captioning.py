"""Captions: the trigger word, caption.csv and .txt sidecars, and BLIP auto-captioning.

Precedence per image: a `caption.csv` row (columns `image_file`, `caption`, matched by file
name), then a `.txt` sidecar with the image's stem, then BLIP between `caption_prefix` and
`caption_suffix`, then (no captioning weights, or autocaption off) the prefix alone.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch
from PIL import Image
from tqdm.auto import tqdm

from formats.tokens import contains_trigger, substitute_trigger
from preprocess.errors import PreprocessError
from preprocess.model_loading import LoadedModel

logger = logging.getLogger(__name__)

CAPTION_CSV_NAMES = ("caption.csv", "captions.csv")
SIDECAR_SUFFIX = ".txt"
MAX_CAPTION_TOKENS = 40
CAPTION_BEAMS = 3  # beam search: deterministic, and better than greedy for BLIP
CAPTION_BATCH = 8


def effective_prefix(caption_prefix: str, trigger: str, suffix: str = "") -> str:
    """The caption prefix, with the trigger prepended (and a warning) when neither it nor the
    suffix has it."""
    prefix = caption_prefix.strip()
    if contains_trigger(prefix, trigger) or contains_trigger(suffix, trigger):
        return prefix
    logger.warning(
        "caption_prefix %r does not contain the trigger %r; using %r so every caption has it.",
        caption_prefix,
        trigger,
        f"{trigger}, {prefix}".strip(", "),
    )
    return f"{trigger}, {prefix}".strip(", ")


def join_caption(prefix: str, text: str, suffix: str = "") -> str:
    """The prefix, a generated caption and the suffix; without a caption, the prefix without
    its separator (`a photo of TOK`, not `a photo of TOK,`)."""
    if not text.strip():
        return (prefix.rstrip(" ,;") + suffix).strip()
    return (f"{prefix} {text.strip()}".strip() + suffix).strip()


def ensure_trigger(caption: str, trigger: str) -> str:
    """A user caption without the trigger gets it prepended, so the token is always trained."""
    return caption if contains_trigger(caption, trigger) else f"{trigger}, {caption}"


@dataclass
class CaptionSources:
    """User-provided captions found beside the images, keyed by image name."""

    captions: dict[str, str] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # image name -> "caption.csv" | ".txt"
    unmatched_rows: list[str] = field(default_factory=list)  # csv rows naming no image
    used_files: set[str] = field(default_factory=set)  # caption files that are not data


def find_caption_sources(files: list[str], images: list[str], root: Path) -> CaptionSources:
    """Read caption.csv and .txt sidecars among `files` (relative POSIX names under `root`)
    and match them to `images` (also relative names)."""
    sources = CaptionSources()
    csv_files = sorted(
        (f for f in files if PurePosixPath(f).name.lower() in CAPTION_CSV_NAMES),
        key=lambda f: (f.count("/"), f),
    )
    if csv_files:
        chosen = csv_files[0]
        if len(csv_files) > 1 and csv_files[1].count("/") == chosen.count("/"):
            raise PreprocessError(
                f"Found several caption files ({', '.join(csv_files)}); keep one caption.csv."
            )
        sources.used_files.add(chosen)
        _read_caption_csv(root / chosen, chosen, images, sources)

    stems = {_stem_key(image): image for image in images}
    for name in files:
        if not name.lower().endswith(SIDECAR_SUFFIX):
            continue
        image = stems.get(_stem_key(name))
        if image is None:
            continue  # reported with the other non-images
        sources.used_files.add(name)
        if image not in sources.captions:
            text = _read_text(root / name, name).strip()
            if text:
                sources.captions[image] = text
                sources.origin[image] = SIDECAR_SUFFIX
    return sources


def _stem_key(name: str) -> str:
    path = PurePosixPath(name)
    return str(path.parent / path.stem)


def _read_text(path: Path, name: str) -> str:
    data = path.read_bytes()
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise PreprocessError(f"{name} is not UTF-8 text; save it as UTF-8.")


def _read_caption_csv(path: Path, name: str, images: list[str], sources: CaptionSources):
    rows = list(csv.DictReader(_read_text(path, name).splitlines()))
    columns = {c.strip().lower(): c for c in (rows[0].keys() if rows else []) if c}
    if rows and not {"image_file", "caption"} <= columns.keys():
        raise PreprocessError(
            f"{name} needs the columns image_file and caption; it has {', '.join(columns)}."
        )
    folder = PurePosixPath(name).parent
    by_path = {str(PurePosixPath(i).relative_to(folder)): i for i in images if _under(i, folder)}
    by_basename: dict[str, list[str]] = {}
    for image in images:
        by_basename.setdefault(PurePosixPath(image).name, []).append(image)
    for row in rows:
        key = (row[columns["image_file"]] or "").strip().replace("\\", "/").removeprefix("./")
        caption = (row[columns["caption"]] or "").strip()
        if not key:
            continue
        # A path relative to the csv wins; a bare file name must name exactly one image.
        image = by_path.get(key)
        if image is None and len(by_basename.get(PurePosixPath(key).name, [])) == 1:
            image = by_basename[PurePosixPath(key).name][0]
        if image is None or not caption:
            sources.unmatched_rows.append(key)
            continue
        sources.captions[image] = caption
        sources.origin[image] = "caption.csv"


def _under(name: str, folder: PurePosixPath) -> bool:
    return str(folder) == "." or PurePosixPath(name).is_relative_to(folder)


def report_mismatches(sources: CaptionSources, images: list[str]) -> None:
    """Warn about caption.csv rows that name no image and images that have no caption file."""
    if not sources.used_files:
        return  # no caption files at all: every image is captioned automatically
    if sources.unmatched_rows:
        logger.warning(
            "caption.csv names images that are not in the upload (or have empty captions): %s",
            ", ".join(sources.unmatched_rows),
        )
    missing = [image for image in images if image not in sources.captions]
    if missing:
        logger.warning(
            "These images have no caption in caption.csv or a .txt file and are captioned "
            "automatically: %s",
            ", ".join(missing),
        )


class Captioner:
    """BLIP image captioning with deterministic beam search."""

    def __init__(self, loaded: LoadedModel):
        self.model, self.processor, self.runtime = loaded.model, loaded.processor, loaded.runtime

    @torch.inference_mode()
    def caption(self, images: list[Image.Image]) -> list[str]:
        inputs = self.processor(images=images, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.runtime.device, self.runtime.dtype)
        tokens = self.model.generate(
            pixel_values=pixels,
            max_new_tokens=MAX_CAPTION_TOKENS,
            num_beams=CAPTION_BEAMS,
            do_sample=False,
        )
        return [t.strip() for t in self.processor.batch_decode(tokens, skip_special_tokens=True)]


def caption_images(
    names: list[str],
    images: list[Image.Image],
    sources: CaptionSources,
    captioner: Captioner | None,
    prefix: str,
    trigger: str,
    suffix: str = "",
) -> list[str]:
    """One caption per image, in order, each containing the trigger; the prefix and suffix
    go around the generated ones (the prefix alone without a captioner)."""
    captions, without_trigger = [], []
    to_caption = [i for i, name in enumerate(names) if name not in sources.captions]
    generated: dict[int, str] = {}
    if to_caption and captioner is not None:
        with tqdm(total=len(to_caption), desc="Captioning (BLIP)", unit="image") as progress:
            for start in range(0, len(to_caption), CAPTION_BATCH):
                batch = to_caption[start : start + CAPTION_BATCH]
                texts = captioner.caption([images[index] for index in batch])
                for index, text in zip(batch, texts, strict=True):
                    # BLIP lower-cases everything: give a captioned trigger its case back.
                    generated[index] = substitute_trigger(text, trigger, trigger, ignore_case=True)
                progress.update(len(batch))
    for index, name in enumerate(names):
        if name in sources.captions:
            caption = ensure_trigger(sources.captions[name], trigger)
            if caption != sources.captions[name]:
                without_trigger.append(name)
        else:
            caption = join_caption(prefix, generated.get(index, ""), suffix)
        captions.append(caption)
    if without_trigger:
        logger.warning(
            "Captions without the trigger %r got it prepended: %s",
            trigger,
            ", ".join(without_trigger),
        )
    return captions
