"""The prepared dataset: the folder preprocessing writes and training reads.

    captions.csv            columns image_path, mask_path, caption (paths relative to the folder)
    NNN-name.png            the crops
    NNN-name.mask.png       greyscale masks, white = the subject (mask_path may be empty)

Captions keep the trigger word as plain text; the trainer substitutes its tokens
(formats/tokens.py).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

CAPTIONS_FILE = "captions.csv"
CAPTION_COLUMNS = ("image_path", "mask_path", "caption")


@dataclass(frozen=True)
class CaptionedImage:
    image_path: Path
    mask_path: Path | None  # greyscale, white = the subject; None: every pixel counts
    caption: str


def read_captions(folder: Path) -> list[CaptionedImage]:
    """The rows of a prepared dataset's `captions.csv` (paths relative to `folder`)."""
    folder = Path(folder)
    table = folder / CAPTIONS_FILE
    if not table.is_file():
        raise FileNotFoundError(f"{table} is missing: the prepared dataset has no captions.csv.")
    with table.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = set(CAPTION_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{table} lacks the column(s) {', '.join(sorted(missing))}.")
        rows = list(reader)
    items = []
    for row in rows:
        image = folder / row["image_path"]
        mask = folder / row["mask_path"] if row["mask_path"] else None
        for path in (image, mask):
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"{table} names {path.name}, which is not in {folder}.")
        items.append(CaptionedImage(image, mask, row["caption"]))
    if not items:
        raise ValueError(f"{table} lists no images: there is nothing to train on.")
    return items


def write_captions(folder: Path, rows: list[CaptionedImage]) -> Path:
    """Write `captions.csv` for `rows`, whose paths lie in `folder`."""
    table = Path(folder) / CAPTIONS_FILE
    with table.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(CAPTION_COLUMNS)
        for row in rows:
            mask = row.mask_path.relative_to(folder).as_posix() if row.mask_path else ""
            writer.writerow([row.image_path.relative_to(folder).as_posix(), mask, row.caption])
    return table
