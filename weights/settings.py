"""Which models to load and where to keep them: every environment variable in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from families import SDXL

TINY = "tiny"  # BASE_MODEL / REFINER_MODEL / SAFETY_CHECKER_MODEL: the embedded tiny models
DEFAULT_SAFETY_CHECKER = "CompVis/stable-diffusion-safety-checker"


@dataclass(frozen=True)
class ModelSettings:
    base_model: str
    refiner_model: str
    cache_dir: Path
    device: str | None  # None: pick automatically
    dtype: str | None
    safety_checker_model: str = DEFAULT_SAFETY_CHECKER

    @classmethod
    def from_env(cls) -> ModelSettings:
        cache = os.environ.get("SDXL_TUNER_CACHE") or Path.home() / ".cache" / "sdxl-tuner"
        return cls(
            base_model=os.environ.get("BASE_MODEL") or SDXL.default_base_model,
            refiner_model=os.environ.get("REFINER_MODEL") or SDXL.default_refiner_model,
            cache_dir=Path(cache),
            device=os.environ.get("TORCH_DEVICE") or None,
            dtype=os.environ.get("TORCH_DTYPE") or None,
            safety_checker_model=os.environ.get("SAFETY_CHECKER_MODEL") or DEFAULT_SAFETY_CHECKER,
        )
