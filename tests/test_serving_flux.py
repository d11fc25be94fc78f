"""The FLUX.1 container over Cog's real HTTP server: a training request body as Replicate's
Flux trainer takes it trains the tiny FLUX.1 on a zip of photos, and the tarball serves as the
version's weights and as `replicate_weights`, in requests as Replicate's Flux predictor takes
them, leaving nothing behind for the next request."""

import base64
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from formats.bundle import BUNDLE_FILE, LORA_FILE, LORA_KOHYA_FILE, TRAINING_CONFIG_FILE
from tests.cog_server import request, request_when_free, running_server
from tests.conftest import tiny_variables
from weights.settings import TINY_FLUX

ROOT = Path(__file__).resolve().parents[1]
# Replicate Flux trainer inputs (a `hf_token` and `wandb_project` are dropped by Cog: this
# project uploads nowhere); `resolution` small for the tiny model.
TRAINING_BODY = {
    "trigger_word": "TOK",
    "steps": 6,
    "lora_rank": 4,
    "learning_rate": 0.01,
    "resolution": "64",
    "autocaption": True,
    "hf_token": "not used",
    "wandb_project": "not used",
}
PROMPT = {
    "prompt": "a photo of TOK",
    "aspect_ratio": "custom",
    "width": 256,
    "height": 256,
    "num_inference_steps": 2,
    "seed": 5,
    "output_format": "png",
    "go_fast": False,  # a newer Replicate input: dropped by Cog
}


@pytest.fixture(scope="module")
def flux_env(model_cache, tmp_path_factory):
    env = pytest.MonkeyPatch()
    variables = {
        **tiny_variables(model_cache),
        "BASE_MODEL": TINY_FLUX,
        "TMPDIR": str(tmp_path_factory.mktemp("flux-server-tmp")),
    }
    for name, value in variables.items():
        env.setenv(name, value)
    yield
    env.undo()


def decode(uri: str) -> bytes:
    return base64.b64decode(uri.split(",", 1)[1])


def image_of(response: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(decode(response["output"][0])))).astype(int)


@pytest.fixture(scope="module")
def flux_bundle(flux_env, tmp_path_factory, file_server_module) -> Path:
    folder = tmp_path_factory.mktemp("flux-train")
    photos = file_server_module.add("/photos.zip", ROOT / "examples" / "cat_photos.zip")
    body = {"input": {"input_images": photos, **TRAINING_BODY}}
    with running_server(folder / "train.log", mode="train", container="flux") as url:
        status, response = request_when_free(f"{url}/trainings", body)
    assert status == 200 and response["status"] == "succeeded", response.get("error")
    assert "Base model: tiny-flux (FLUX.1)" in response["logs"]
    bundle = folder / BUNDLE_FILE
    bundle.write_bytes(decode(response["output"]))
    return bundle


def test_a_replicate_flux_training_request_trains_a_flux_lora(flux_bundle):
    with tarfile.open(flux_bundle) as tar:
        names = set(tar.getnames())
        record = tar.extractfile(TRAINING_CONFIG_FILE).read().decode()
    assert {LORA_FILE, LORA_KOHYA_FILE, TRAINING_CONFIG_FILE} <= names
    assert '"family": "flux"' in record and '"steps": 6' in record


def test_the_trained_flux_version_and_replicate_weights_change_images_and_leave_no_state(
    flux_bundle, flux_env, tmp_path, file_server_module
):
    weights_url = file_server_module.add("/weights.tar", flux_bundle)
    with running_server(tmp_path / "base.log", container="flux") as url:
        schema = request("GET", f"{url}/openapi.json")[1]["components"]["schemas"]["Input"]
        assert {"aspect_ratio", "guidance_scale", "model"} <= set(schema["properties"])
        assert "negative_prompt" not in schema["properties"]
        base = request_when_free(f"{url}/predictions", {"input": PROMPT})[1]
        assert base["status"] == "succeeded", base.get("error")
        trained = request_when_free(
            f"{url}/predictions", {"input": {**PROMPT, "replicate_weights": weights_url}}
        )[1]
        assert trained["status"] == "succeeded", trained.get("error")
        again = request_when_free(f"{url}/predictions", {"input": PROMPT})[1]
    assert np.abs(image_of(trained) - image_of(base)).mean() > 1
    assert np.array_equal(image_of(again), image_of(base))
    with running_server(
        tmp_path / "version.log", container="flux", weights=str(flux_bundle)
    ) as url:
        version = request_when_free(f"{url}/predictions", {"input": PROMPT})[1]
    assert version["status"] == "succeeded", version.get("error")
    assert np.array_equal(image_of(version), image_of(trained))
