"""A set of photos as the studio keeps it: the upload as sent (a zip, or loose files zipped
here), the dry run's review of it (crops, masks, captions, warnings, skipped files), and the
zip a training gets, whose caption.csv holds the captions as the person edited them."""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from formats.bundle import DRY_RUN_IMAGES_DIR, DRY_RUN_MASKS_DIR, DRY_RUN_PLAN_FILE, PREVIEW_FILE
from preprocess.captioning import CAPTION_CSV_NAMES

# Cog caps a request body at 100 MiB (docs/serving.md); an upload the API could not take is
# refused here before it is stored.
MAX_UPLOAD_BYTES = 100 * 2**20
# The unpacked size a zip may declare before the studio reads it to add caption.csv: ten
# times the upload bound (photos compress little; more means a zip bomb).
MAX_UNPACKED_BYTES = 10 * MAX_UPLOAD_BYTES
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class PhotoError(ValueError):
    """An upload the studio cannot store, with what to do about it."""


def safe_name(name: str, fallback: str = "file") -> str:
    """`name` as one file name: no folders, no characters a URL or shell would mind."""
    cleaned = SAFE_NAME.sub("_", PurePosixPath(name.replace("\\", "/")).name).strip("._")
    return cleaned[:80] or fallback


def upload_name(name: str) -> str:
    """The name an upload is kept under: its own (the trainer's messages name it), as a .zip
    or .tar file, the types the studio's page sends."""
    name = safe_name(name, "photos.zip")
    return name if name.lower().endswith((".zip", ".tar")) else f"{name}.zip"


def zip_loose_files(files: list[tuple[str, bytes]]) -> bytes:
    """Loose photos (and caption files) dropped together, as one zip the trainer unpacks."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files:
            archive.writestr(safe_name(name), data)
    return buffer.getvalue()


def check_upload_size(data: bytes) -> None:
    if len(data) > MAX_UPLOAD_BYTES:
        raise PhotoError(
            f"The upload is {len(data) / 2**20:.0f} MiB; the API takes at most "
            f"{MAX_UPLOAD_BYTES // 2**20} MiB. Send fewer or smaller photos."
        )


def with_captions(upload: bytes, captions: dict[str, str]) -> bytes:
    """The upload (a zip or tar) as a zip with a caption.csv at its root giving `captions`
    (upload name -> caption); a caption.csv or captions.csv already at the root is replaced
    (the trainer reads the shallowest one, so this one decides). Every other file is copied
    unchanged; nothing is extracted to disk."""
    members = _archive_files(upload)
    if sum(size for _, size, _ in members) > MAX_UNPACKED_BYTES:
        raise PhotoError("The upload unpacks to more than 1 GiB; send the photos in smaller sets.")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as result:
        for name, _, read in members:
            if name.lower() not in CAPTION_CSV_NAMES:
                result.writestr(name, read())
        result.writestr("caption.csv", captions_csv(captions))
    return buffer.getvalue()


def _archive_files(upload: bytes) -> list[tuple[str, int, object]]:
    """(name, declared size, reader) of each regular file of a zip or tar upload."""
    if zipfile.is_zipfile(io.BytesIO(upload)):
        archive = zipfile.ZipFile(io.BytesIO(upload))
        files = [m for m in archive.infolist() if not m.is_dir()]
        return [(m.filename, m.file_size, lambda m=m: archive.read(m)) for m in files]
    try:
        tar = tarfile.open(fileobj=io.BytesIO(upload))
    except tarfile.TarError as error:
        raise PhotoError(f"The upload is neither a zip nor a tar: {error}.") from None
    files = [m for m in tar.getmembers() if m.isfile()]
    return [(m.name, m.size, lambda m=m: tar.extractfile(m).read()) for m in files]


def captions_csv(captions: dict[str, str]) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["image_file", "caption"])
    writer.writerows(sorted(captions.items()))
    return text.getvalue()


def read_review(dry_run_tar: bytes, pictures: Path) -> dict:
    """The dry run's plan from its tarball; each crop's and mask's thumbnail and the preview
    are written into `pictures` and named there by file name."""
    pictures.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(dry_run_tar)) as tar:
        plan = json.loads(_member(tar, DRY_RUN_PLAN_FILE))
        for image in plan["images"]:
            for key, folder in (("thumbnail", DRY_RUN_IMAGES_DIR), ("mask", DRY_RUN_MASKS_DIR)):
                if image.get(key):
                    name = f"{folder}-{safe_name(image[key])}"
                    (pictures / name).write_bytes(_member(tar, image[key]))
                    image[key] = name
        if PREVIEW_FILE in tar.getnames():
            (pictures / PREVIEW_FILE).write_bytes(_member(tar, PREVIEW_FILE))
            plan["preview"] = PREVIEW_FILE
    return plan


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    """A regular file of the tarball by its exact name (nothing is extracted by path)."""
    member = tar.getmember(name)
    if not member.isfile():
        raise PhotoError(f"{name} in the dry run's tarball is not a file.")
    return tar.extractfile(member).read()
