"""Which models to load and where to keep them: every environment variable in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from families import SDXL

TINY = "tiny"  # BASE_MODEL / REFINER_MODEL value that selects the embedded tiny models

# The training-data preprocessors Replicate's SDXL trainer uses (CAPTION_MODEL, MASK_MODEL,
# UPSCALER_MODEL override them; `tiny` selects weights/tiny_preprocessors.py). `repo@revision`
# pins a commit: for CLIPSeg and Swin2SR the safetensors weights exist only in the hub's
# conversion pull requests, whose commits these are (we never unpickle .bin files).
DEFAULT_CAPTION_MODEL = (
    "Salesforce/blip-image-captioning-large@2227ac38c9f16105cb0412e7cab4759978a8fd90"
)
DEFAULT_MASK_MODEL = "CIDAS/clipseg-rd64-refined@325a839908143a34b409ae6f2910fa015ea390e6"
DEFAULT_UPSCALER_MODEL = (
    "caidas/swin2SR-realworld-sr-x4-64-bsrgan-psnr@fbc21c5ea78579a0d415f74e06eefb5c77028475"
)


@dataclass(frozen=True)
class ModelSettings:
    base_model: str
    refiner_model: str
    cache_dir: Path
    device: str | None  # None: pick automatically
    dtype: str | None
    caption_model: str = DEFAULT_CAPTION_MODEL  # BLIP captioning
    mask_model: str = DEFAULT_MASK_MODEL  # CLIPSeg prompt masks
    upscaler_model: str = DEFAULT_UPSCALER_MODEL  # Swin2SR super-resolution

    @classmethod
    def from_env(cls) -> ModelSettings:
        cache = os.environ.get("SDXL_TUNER_CACHE") or Path.home() / ".cache" / "sdxl-tuner"
        return cls(
            base_model=os.environ.get("BASE_MODEL") or SDXL.default_base_model,
            refiner_model=os.environ.get("REFINER_MODEL") or SDXL.default_refiner_model,
            cache_dir=Path(cache),
            device=os.environ.get("TORCH_DEVICE") or None,
            dtype=os.environ.get("TORCH_DTYPE") or None,
            caption_model=os.environ.get("CAPTION_MODEL") or DEFAULT_CAPTION_MODEL,
            mask_model=os.environ.get("MASK_MODEL") or DEFAULT_MASK_MODEL,
            upscaler_model=os.environ.get("UPSCALER_MODEL") or DEFAULT_UPSCALER_MODEL,
        )
