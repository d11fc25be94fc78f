"""Fixtures shared by the preprocessing tests, which load this module with `pytest_plugins`."""

import pytest
import torch

from weights.embedded.tiny_preprocessors import KINDS, ensure_tiny_preprocessor
from weights.settings import ModelSettings


@pytest.fixture(scope="session")
def tiny_settings(model_cache) -> ModelSettings:
    """Settings selecting the tiny preprocessors (built once per session) on the CPU."""
    for kind in KINDS:
        ensure_tiny_preprocessor(kind, model_cache)
    return ModelSettings(
        base_model="tiny",
        refiner_model="tiny",
        cache_dir=model_cache,
        device="cpu",
        dtype=None,
        caption_model="tiny",
        mask_model="tiny",
        upscaler_model="tiny",
    )


@pytest.fixture
def one_torch_thread():
    """The tiny models are too small to gain from threads, and on a busy 2-core machine
    spinning worker threads make them ~30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
