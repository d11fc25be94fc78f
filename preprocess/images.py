"""Loading one photo as an upright 8-bit RGB image of a workable size.

Recognised by content, not extension. EXIF orientation applied, colour profiles converted to
sRGB, alpha composited onto a neutral grey, 16-bit / CMYK / palette / greyscale to RGB.
Huge JPEGs are decoded at a reduced scale (the DCT does the shrinking); other formats above
the pixel limit are refused before they are decoded.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

# Formats people's phones and file managers produce; MPO is a multi-picture JPEG.
IMAGE_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"}
# Above this many decoded pixels a file is refused (a 16k x 16k image is 768 MB as RGB).
MAX_PIXELS = 100_000_000
BACKGROUND = (128, 128, 128)  # for transparent pixels: neutral grey
SRGB = ImageCms.createProfile("sRGB")
# Container signatures of files that are photos but that we cannot decode.
KNOWN_UNSUPPORTED = {b"ftypheic": "HEIC", b"ftypheix": "HEIC", b"ftypmif1": "HEIF"}


class ImageRejected(Exception):
    """This file cannot be used as a training image; the message says why."""


def looks_like_image(path: Path) -> bool:
    """Whether `path`'s content is an image PIL can identify (only the header is read)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path):
                return True
    except Image.DecompressionBombError:
        return True  # an image: refused when loaded, with its size as the reason
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def unsupported_photo_kind(path: Path) -> str | None:
    """'HEIC' etc. for photo containers we recognise but cannot decode."""
    with open(path, "rb") as handle:
        head = handle.read(12)
    return KNOWN_UNSUPPORTED.get(head[4:12])


def load_image(path: Path, min_size: tuple[int, int]) -> Image.Image:
    """Open `path` as upright RGB, at least `min_size` (w, h) where the source allows, and
    never decoded larger than needed where the format can shrink while decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as error:
        raise ImageRejected(f"decompression bomb refused ({error})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ImageRejected("not a readable image") from None
    with image:
        if image.format not in IMAGE_FORMATS:
            raise ImageRejected(f"unsupported image format {image.format}")
        if image.format in ("JPEG", "MPO"):
            # Decode at 1/2, 1/4 or 1/8 scale while every side stays >= what is needed.
            side = max(min_size)
            image.draft("RGB", (side, side))
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ImageRejected(
                f"{width}x{height} pixels is above the {MAX_PIXELS // 1_000_000}-megapixel "
                "limit; downscale it or save it as JPEG"
            )
        try:
            image.seek(0)  # first frame of a GIF / multi-page TIFF
            image.load()
            upright = ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError) as error:
            raise ImageRejected(f"truncated or corrupt image ({error})") from None
        return to_rgb(upright, image.info.get("icc_profile"))


def to_rgb(image: Image.Image, icc_profile: bytes | None = None) -> Image.Image:
    """8-bit sRGB from any mode PIL decodes."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _high_depth_to_l(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        image = Image.alpha_composite(flat, rgba)
    if icc_profile and image.mode in ("RGB", "RGBA", "CMYK", "L"):
        image = _to_srgb(image, icc_profile)
    return image if image.mode == "RGB" else image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale scaled (not clipped) to 8 bits."""
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I") and values.max() <= 65535 else values.max()
    if image.mode == "F":
        top = 1.0 if values.max() <= 1.0 else values.max()
    scaled = np.clip(values / max(top, 1e-12) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _to_srgb(image: Image.Image, icc_profile: bytes) -> Image.Image:
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        return ImageCms.profileToProfile(image, source, SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image  # a broken profile: keep the pixels as they are


def cover_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """The smallest size with `size`'s aspect ratio that covers `target` on both sides."""
    width, height = size
    scale = max(target[0] / width, target[1] / height)
    return max(target[0], round(width * scale)), max(target[1], round(height * scale))


def shrink_to_cover(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Downscale (never upscale) so that `image` still covers `target`."""
    size = cover_size(image.size, target)
    if size[0] >= image.width:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
