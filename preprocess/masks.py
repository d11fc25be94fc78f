"""Masks that say which pixels matter: CLIPSeg prompt masks, face masks, or the whole image.

Every mask is an 8-bit greyscale image of its photo's size (255 = train on this pixel).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from preprocess.model_loading import LoadedModel

logger = logging.getLogger(__name__)

CLIPSEG_BIAS = 0.01  # as Replicate's trainer: no pixel gets exactly zero weight
CLIPSEG_BATCH = 8
FACE_CASCADE = "haarcascade_frontalface_default.xml"
DETECTION_SIDE = 512  # faces are detected on a copy whose short side is at most this
MIN_FACE_FRACTION = 0.1  # faces smaller than this share of the short side are noise
FACE_MARGIN = 0.25  # grow each face box so hair, chin and ears count too


def whole_image_mask(size: tuple[int, int]) -> Image.Image:
    return Image.new("L", size, 255)


class ClipSegMasker:
    """CLIPSeg: how much each pixel matches the prompt, against an empty prompt."""

    def __init__(self, loaded: LoadedModel, temperature: float):
        self.model, self.processor, self.runtime = loaded.model, loaded.processor, loaded.runtime
        self.temperature = temperature

    @torch.inference_mode()
    def masks(self, images: list[Image.Image], prompt: str) -> list[Image.Image]:
        inputs = self.processor(
            text=[prompt, ""] * len(images),
            images=[image for image in images for _ in range(2)],
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        inputs = {k: v.to(self.runtime.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.runtime.dtype)
        logits = self.model(**inputs).logits.float()
        logits = logits.reshape(len(images), 2, *logits.shape[-2:])  # (prompt, empty) pairs
        probs = torch.softmax(logits / self.temperature, dim=1)[:, 0]
        probs = (probs + CLIPSEG_BIAS).clamp(0, 1)
        peak = probs.flatten(1).max(dim=1).values[:, None, None]
        probs = (255 * probs / peak).round().to(torch.uint8).cpu().numpy()
        return [
            Image.fromarray(p, mode="L").resize(image.size, Image.Resampling.BILINEAR)
            for p, image in zip(probs, images, strict=True)
        ]


class FaceDetector:
    """OpenCV's frontal-face Haar cascade (the weights ship inside opencv-python)."""

    def __init__(self):
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + FACE_CASCADE)
        if self.cascade.empty():
            raise RuntimeError(f"OpenCV's {FACE_CASCADE} is missing: install opencv 4.x.")

    def detect(self, image: Image.Image) -> list[tuple[int, int, int, int]]:
        """Face boxes (x, y, w, h) in `image`'s pixels."""
        scale = min(1.0, DETECTION_SIDE / min(image.size))
        small = image.convert("L")
        if scale < 1.0:
            small = small.resize(
                (round(image.width * scale), round(image.height * scale)),
                Image.Resampling.BILINEAR,
            )
        grey = cv2.equalizeHist(np.asarray(small))
        min_side = max(24, round(MIN_FACE_FRACTION * min(small.size)))
        found = self.cascade.detectMultiScale(
            grey, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
        )
        return [tuple(round(v / scale) for v in box) for box in found]


def face_mask(size: tuple[int, int], boxes: list[tuple[int, int, int, int]]) -> Image.Image:
    """One mask with an ellipse per face; the whole image when there is no face."""
    if not boxes:
        return whole_image_mask(size)
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for x, y, w, h in boxes:
        dx, dy = w * FACE_MARGIN, h * FACE_MARGIN
        draw.ellipse((x - dx, y - 1.5 * dy, x + w + dx, y + h + dy), fill=255)
    blur = max(1, round(0.05 * min(size)))
    return mask.filter(ImageFilter.GaussianBlur(blur))
