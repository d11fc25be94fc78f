"""Post-processing of finished images: invisible watermark, and files with unique names."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion_xl.watermark import StableDiffusionXLWatermarker
from PIL import Image

PIL_FORMATS = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}


# The smallest image the watermark fits in: diffusers' wrapper skips narrower images, and the
# encoder itself (imwatermark) refuses fewer pixels than 256 x 256 (e.g. 256 x 64).
MIN_WATERMARK_WIDTH = 256
MIN_WATERMARK_PIXELS = 256 * 256


class Watermarker:
    """SDXL's invisible watermark (the bits diffusers' SDXL pipelines embed), on PIL images.
    Images too small to carry it pass unchanged."""

    def __init__(self):
        self._encoder = StableDiffusionXLWatermarker()

    def apply(self, images: list[Image.Image]) -> list[Image.Image]:
        width, height = images[0].size  # one request's images share a size
        if width < MIN_WATERMARK_WIDTH or width * height < MIN_WATERMARK_PIXELS:
            return images
        batch = torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) for i in images]))
        batch = batch.permute(0, 3, 1, 2) / 127.5 - 1.0
        marked = self._encoder.apply_watermark(batch)
        arrays = ((marked.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).round().clip(0, 255)
        return [Image.fromarray(a.astype(np.uint8)) for a in arrays]


def save_images(
    images: list[Image.Image], folder: Path, output_format: str, quality: int
) -> list[Path]:
    """Write each image under a name no other request uses; written to a temporary name first,
    so a reader never sees half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    batch = uuid.uuid4().hex[:12]
    paths = []
    for index, image in enumerate(images):
        path = folder / f"out-{batch}-{index}.{output_format}"
        partial = path.with_name(f".{path.name}.partial")
        options = {} if output_format == "png" else {"quality": quality}
        image.save(partial, format=PIL_FORMATS[output_format], **options)
        os.replace(partial, path)
        paths.append(path)
    return paths
