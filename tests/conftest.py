"""Shared fixtures: the tiny models are built once per test session, in a private cache."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fileserver import FileServer  # noqa: E402
from weights.tiny import ensure_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def tiny_models(model_cache) -> dict[str, Path]:
    """Folders of the tiny base and refiner, built once for the whole session."""
    return {role: ensure_tiny_model(role, model_cache) for role in ("base", "refiner")}


@pytest.fixture
def tiny_env(monkeypatch, model_cache, tiny_models):
    """Environment that points the predictor and trainer at the tiny models."""
    monkeypatch.setenv("BASE_MODEL", "tiny")
    monkeypatch.setenv("REFINER_MODEL", "tiny")
    for preprocessor in ("CAPTION_MODEL", "MASK_MODEL", "UPSCALER_MODEL"):
        monkeypatch.setenv(preprocessor, "tiny")
    monkeypatch.setenv("SDXL_TUNER_CACHE", str(model_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return model_cache


@pytest.fixture
def file_server():
    """A real HTTP server on 127.0.0.1; `file_server.add(path, data, ...)` returns the URL."""
    with FileServer() as server:
        yield server
