"""Builders for the hostile and awkward uploads the preprocessing tests feed in.

Every file is generated (nothing binary is committed); each builder returns bytes or writes
an archive, and documents what the pipeline must do with it.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skimage_data

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


def photo(width: int = 96, height: int = 72, seed: int = 0) -> Image.Image:
    """A smooth random photo-like RGB image."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def two_halves(width: int, height: int, top=RED, bottom=BLUE) -> Image.Image:
    image = Image.new("RGB", (width, height), top)
    image.paste(bottom, (0, height // 2, width, height))
    return image


def exif_rotated_jpeg() -> bytes:
    """Displays as an 80x120 portrait, red on top and blue below; stored sideways with EXIF
    orientation 6 (rotate 90° clockwise to display), as phones save it."""
    stored = two_halves(80, 120).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif)


def cmyk_jpeg() -> bytes:
    """Pure red in CMYK."""
    return encode(Image.new("CMYK", (80, 64), (0, 255, 255, 0)), "JPEG", quality=95)


def png_16bit() -> bytes:
    """16-bit greyscale at half intensity (32768 of 65535): must become ~128, not 255."""
    return encode(Image.fromarray(np.full((64, 80), 32768, dtype=np.uint16)), "PNG")


def rgba_png() -> bytes:
    """Left half opaque green, right half fully transparent (red underneath)."""
    image = Image.new("RGBA", (80, 64), (255, 0, 0, 0))
    image.paste((*GREEN, 255), (0, 0, 40, 64))
    return encode(image, "PNG")


def gif_two_frames() -> bytes:
    """First frame blue, second red: the first frame is the photo."""
    frames = [Image.new("RGB", (72, 72), BLUE), Image.new("RGB", (72, 72), RED)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def truncated_jpeg() -> bytes:
    data = encode(photo(120, 90, seed=7), "JPEG", quality=95)
    return data[: len(data) * 2 // 3]


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares `width` x `height` 8-bit grey pixels (a
    decompression bomb: a few hundred bytes that would decode to hundreds of MB)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 8, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def face_photo() -> Image.Image:
    """scikit-image's astronaut (CC0): one real face."""
    return Image.fromarray(skimage_data.astronaut())


def two_faces_photo() -> Image.Image:
    """Two faces side by side: the astronaut and her mirror image (1024x512)."""
    face = skimage_data.astronaut()
    return Image.fromarray(np.concatenate([face, face[:, ::-1]], axis=1))


NOT_IMAGES = {
    "notes.pdf": b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n",
    "clip.mp4": b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(64),
    "IMG_0002.HEIC": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
}

CLUTTER = {
    "__MACOSX/trip/._IMG_0001.jpg": b"\x00\x05\x16\x07 apple double",
    ".DS_Store": b"\x00\x00\x00\x01Bud1",
    "trip/.hidden.jpg": b"not even an image",
}


def write_file(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return path


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def write_folder(root: Path, members: dict[str, bytes]) -> Path:
    for name, payload in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(payload)
    return root


def zip_with_symlink(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.jpg", encode(photo(), "JPEG"))
        info = zipfile.ZipInfo("b.jpg")
        info.external_attr = 0o120777 << 16  # S_IFLNK
        archive.writestr(info, "/etc/passwd")
    return path


def tar_with_symlink(path: Path) -> Path:
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("photo.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(info)
    return path


def zip_bomb(path: Path) -> Path:
    """Two small members whose headers declare 3.75 GiB each: refused before anything is
    written (the declared size is what a bomb would inflate to)."""
    payload = bytes(1000)
    write_zip(path, {"a.jpg": payload, "b.jpg": payload})
    data = bytearray(path.read_bytes())
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) != -1:  # central directory entries
        data[start + 24 : start + 28] = struct.pack("<I", 0xF0000000)  # uncompressed size
        start += 4
    path.write_bytes(bytes(data))
    return path


def corrupt_zip(path: Path) -> Path:
    write_zip(path, {f"{i}.jpg": encode(photo(seed=i), "BMP") for i in range(3)})
    data = bytearray(path.read_bytes())
    data[60:600] = bytes(540)  # damage the compressed streams, keep the directory
    path.write_bytes(bytes(data))
    return path
