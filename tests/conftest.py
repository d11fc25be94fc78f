"""Shared fixtures: the tiny models are built once per test session, in a private cache."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The local Ray cluster of tests/test_fleet.py keeps to 127.0.0.1 (fleet/cluster.py says why);
# Ray reads this at import, before that module imports fleet.cluster.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from tests.fileserver import ALLOWED_HOSTS, FileServer  # noqa: E402
from weights.embedded.tiny import ensure_tiny_model  # noqa: E402
from weights.network import ALLOWED_HOSTS_VARIABLE  # noqa: E402
from weights.settings import MODEL_VARIABLES, TINY  # noqa: E402


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def tiny_models(model_cache) -> dict[str, Path]:
    """Folders of the tiny base and refiner, built once for the whole session."""
    return {role: ensure_tiny_model(role, model_cache) for role in ("base", "refiner")}


@pytest.fixture(scope="session")
def tiny_sd15_model(model_cache) -> Path:
    """Folder of the tiny SD 1.5, built once for the whole session."""
    return ensure_tiny_model("base", model_cache, family="sd15")


def tiny_variables(model_cache: Path) -> dict[str, str]:
    """Environment that points the predictor, trainer and preprocessors at the tiny models,
    and lets them fetch from the local file server."""
    return {
        **{variable: TINY for variable in MODEL_VARIABLES},
        "SDXL_TUNER_CACHE": str(model_cache),
        "HF_HUB_OFFLINE": "1",
        ALLOWED_HOSTS_VARIABLE: ALLOWED_HOSTS,
    }


@pytest.fixture
def tiny_env(monkeypatch, model_cache, tiny_models):
    for name, value in tiny_variables(model_cache).items():
        monkeypatch.setenv(name, value)
    return model_cache


@pytest.fixture
def file_server():
    """A real HTTP server on 127.0.0.1; `file_server.add(path, data, ...)` returns the URL."""
    with FileServer() as server:
        yield server


@pytest.fixture(scope="module")
def file_server_module():
    """`file_server` for a whole test module (its files outlive one test)."""
    with FileServer() as server:
        yield server
