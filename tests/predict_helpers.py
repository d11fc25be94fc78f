"""Shared helpers for the predictor tests: tiny predictors and quick requests."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from predict import Predictor
from predict_flux import Predictor as FluxPredictor
from serving.cli import declared_defaults
from tests.fileserver import ALLOWED_HOSTS
from toyworld.recognition import FollowRates, follow_rates, held_out_prompts
from weights.network import ALLOWED_HOSTS_VARIABLE

# Small and fast: one denoising step at 64x64 is enough to tell outputs apart.
FAST = dict(width=64, height=64, num_inference_steps=1, seed=7, prompt="a photo of a cat")


@contextmanager
def one_torch_thread():
    """Tiny models run fastest on one thread; two threads on shared, busy cores spin-wait
    (measured here: 0.3 s vs 4-6 s per 64x64 step)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tiny_predictor(
    model_cache: Path, weights: str | None = None, base_model: str = "tiny"
) -> Predictor:
    """A Predictor set up on a tiny base (`tiny`: SDXL, `tiny-sd15`), refiner and safety
    checker."""
    with pytest.MonkeyPatch.context() as env:
        for variable in ("BASE_MODEL", "REFINER_MODEL", "SAFETY_CHECKER_MODEL"):
            env.setenv(variable, "tiny")
        env.setenv("BASE_MODEL", base_model)
        env.setenv("SDXL_TUNER_CACHE", str(model_cache))
        env.setenv("HF_HUB_OFFLINE", "1")
        env.setenv(ALLOWED_HOSTS_VARIABLE, ALLOWED_HOSTS)  # the local file server
        predictor = Predictor()
        predictor.setup(weights)
    return predictor


def flux_predictor_on(model_cache: Path, base_model: str) -> FluxPredictor:
    """The FLUX.1 container's Predictor set up on an embedded base (`tiny-flux`, `toy-flux`)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("BASE_MODEL", base_model)
        env.setenv("SAFETY_CHECKER_MODEL", "tiny")
        env.setenv("SDXL_TUNER_CACHE", str(model_cache))
        env.setenv("HF_HUB_OFFLINE", "1")
        predictor = FluxPredictor()
        predictor.setup(None)
    return predictor


def held_out_follow_rates(predict, count: int = 16) -> FollowRates:
    """How often `predict(prompt=..., seed=...)` (one image path) draws `count` held-out toy
    scenes' colours, one seed per prompt, on one torch thread."""
    prompted = held_out_prompts(count)
    with one_torch_thread():
        images = [
            Image.open(predict(prompt=scene.caption, seed=index)).convert("RGB")
            for index, scene in enumerate(prompted)
        ]
    return follow_rates(images, prompted)


def predict_paths(predictor: Predictor, **inputs) -> list:
    return predictor.predict(**{**declared_defaults(), **FAST, **inputs})


def predict_arrays(predictor: Predictor, **inputs) -> list[np.ndarray]:
    return [np.asarray(Image.open(path)) for path in predict_paths(predictor, **inputs)]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
