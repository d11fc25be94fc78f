"""Turning an upload (zip, tar, tar.gz or a local folder) into a list of candidate files.

Archives are unpacked by `weights.archive.unpack_archive`, which checks every member before
writing anything. Operating-system clutter (`__MACOSX/`, `._*`, `.DS_Store`, hidden files)
is ignored; every remaining file keeps its relative path, so same-named photos in two
folders stay distinct.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from preprocess.errors import PreprocessError
from preprocess.images import looks_like_image, unsupported_photo_kind
from weights.archive import UnsafeArchiveError, archive_format, unpack_archive

logger = logging.getLogger(__name__)

FILETYPES = ("infer", "zip", "tar")
CLUTTER_FOLDERS = {"__MACOSX"}


@dataclass(frozen=True)
class Upload:
    root: Path  # folder holding the files
    files: list[str]  # every non-clutter file, relative POSIX names, sorted
    images: list[str]  # the files whose content is a supported image
    not_images: list[tuple[str, str]]  # (name, reason)


def open_upload(input_path: Path, filetype: str, scratch: Path) -> Upload:
    """Unpack `input_path` into `scratch` (a folder that does not exist yet) unless it is a
    folder already, then sort its files into images and the rest."""
    input_path = Path(input_path)
    if filetype not in FILETYPES:
        raise PreprocessError(
            f"input_images_filetype must be one of {FILETYPES}, not {filetype!r}."
        )
    if not input_path.exists():
        raise PreprocessError(f"{input_path} does not exist.")
    if input_path.is_dir():
        root = input_path
        names = _walk(root)
    else:
        if input_path.stat().st_size == 0:
            raise PreprocessError(f"{input_path.name} is empty: upload a zip or tar of photos.")
        expected = None if filetype == "infer" else filetype
        if archive_format(input_path) is None:
            raise PreprocessError(
                f"{input_path.name} is not a zip or tar archive (or is corrupt): upload the "
                "photos as a .zip, .tar or .tar.gz file."
            )
        try:
            unpack_archive(input_path, scratch, expected_format=expected)
        except UnsafeArchiveError as error:
            raise PreprocessError(f"Cannot use {input_path.name}: {error}") from None
        root = scratch
        names = _walk(root)

    files = [name for name in names if not is_clutter(name)]
    images, not_images = [], []
    for name in files:
        if looks_like_image(root / name):
            images.append(name)
        elif (photo := unsupported_photo_kind(root / name)) is not None:
            not_images.append((name, f"{photo} photo: convert it to JPEG or PNG"))
        else:
            not_images.append((name, "not an image"))
    return Upload(root, files, images, not_images)


def is_clutter(name: str) -> bool:
    """Files the operating system adds to archives: never data, never reported."""
    parts = PurePosixPath(name).parts
    return any(part in CLUTTER_FOLDERS or part.startswith(".") for part in parts)


def _walk(root: Path) -> list[str]:
    names = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            # A local folder may link anywhere; do not follow it.
            logger.warning("Ignoring symbolic link %s.", path.relative_to(root).as_posix())
            continue
        if path.is_file():
            names.append(path.relative_to(root).as_posix())
    return names
