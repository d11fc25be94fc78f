"""Bringing a crop to its training size: Swin2SR for crops smaller than the target, then one
Lanczos resize. Crops already at least as large as the target are only downscaled."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from preprocess.model_loading import LoadedModel


class Upscaler:
    """Swin2SR super-resolution (one pass of the model's factor, e.g. x4)."""

    def __init__(self, loaded: LoadedModel):
        self.model, self.processor, self.runtime = loaded.model, loaded.processor, loaded.runtime
        self.factor = int(self.model.config.upscale)

    @torch.inference_mode()
    def upscale(self, image: Image.Image) -> Image.Image:
        pixels = self.processor(image, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.runtime.device, self.runtime.dtype)
        output = self.model(pixel_values=pixels).reconstruction[0]
        # The processor pads to the window size; cut the padding's share back off.
        output = output[:, : image.height * self.factor, : image.width * self.factor]
        array = (output.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def needs_upscaling(image: Image.Image, target: tuple[int, int]) -> bool:
    return image.width < target[0] or image.height < target[1]


def resize_to(image: Image.Image, target: tuple[int, int], upscaler: Upscaler | None):
    """`image` at exactly `target`: super-resolved first when it is smaller (and an upscaler
    is available), never enlarged beyond one model pass."""
    if upscaler is not None and needs_upscaling(image, target):
        image = upscaler.upscale(image)
    if image.size == target:
        return image
    return image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
