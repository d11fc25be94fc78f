"""The FLUX.1 container over Cog's real HTTP server: a training request body as Replicate's
Flux trainer takes it trains the tiny FLUX.1 on a zip of photos, logs to Weights & Biases (in
wandb's offline mode) and uploads the LoRA to a hub (a local server that answers the hub's
upload API), never showing the two secrets; the tarball serves as the version's weights and
as `replicate_weights`, in requests as Replicate's Flux predictor takes them, leaving nothing
behind for the next request."""

import base64
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from families import FLUX
from formats.bundle import (
    BUNDLE_FILE,
    LORA_FILE,
    LORA_KOHYA_FILE,
    MODEL_CARD_FILE,
    TRAINING_CONFIG_FILE,
)
from tests.cog_server import request, request_when_free, running_server
from tests.conftest import tiny_variables
from tests.hub_server import HubServer

TINY_FLUX = FLUX.tiny_model

ROOT = Path(__file__).resolve().parents[1]
HF_TOKEN = "hf_uploadsecret0123456789"
WANDB_KEY = "wandbsecret0123456789abcdef0123456789abcd"
SAMPLE_PROMPT = "a photo of TOK on the beach"
# Replicate Flux trainer inputs; `resolution` small for the tiny model.
TRAINING_BODY = {
    "trigger_word": "TOK",
    "steps": 6,
    "lora_rank": 4,
    "learning_rate": 0.01,
    "resolution": "64",
    "autocaption": True,
    "hf_repo_id": "someone/my-flux-lora",
    "hf_token": HF_TOKEN,
    "wandb_api_key": WANDB_KEY,
    "wandb_project": "flux-tests",
    "wandb_run": "tiny",
    "wandb_sample_prompts": SAMPLE_PROMPT,
    "wandb_sample_interval": 3,
    "wandb_save_interval": 3,
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
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture(scope="module")
def wandb_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("wandb")


@pytest.fixture(scope="module")
def flux_env(model_cache, tmp_path_factory, hub, wandb_dir):
    env = pytest.MonkeyPatch()
    variables = {
        **tiny_variables(model_cache),
        "BASE_MODEL": TINY_FLUX,
        "TMPDIR": str(tmp_path_factory.mktemp("flux-server-tmp")),
        # Uploads reach the local hub (the models are embedded: nothing else asks the hub).
        "HF_HUB_OFFLINE": "",
        "HF_ENDPOINT": hub.url,
        # wandb writes the run to WANDB_DIR instead of sending it: readable afterwards.
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(wandb_dir),
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
def flux_training(flux_env, tmp_path_factory, file_server_module) -> tuple[Path, dict, Path]:
    """The tarball, the training's response and the server's log."""
    folder = tmp_path_factory.mktemp("flux-train")
    photos = file_server_module.add("/photos.zip", ROOT / "examples" / "cat_photos.zip")
    body = {"input": {"input_images": photos, **TRAINING_BODY}}
    with running_server(folder / "train.log", mode="train", container="flux") as url:
        status, response = request_when_free(f"{url}/trainings", body)
    assert status == 200 and response["status"] == "succeeded", response.get("error")
    assert "Base model: tiny-flux (FLUX.1)" in response["logs"]
    bundle = folder / BUNDLE_FILE
    bundle.write_bytes(decode(response["output"]))
    return bundle, response, folder / "train.log"


@pytest.fixture(scope="module")
def flux_bundle(flux_training) -> Path:
    return flux_training[0]


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


def test_the_lora_and_a_hub_model_card_are_uploaded_to_hf_repo_id(flux_training, hub):
    bundle, response, _ = flux_training
    assert [r.path for r in hub.requests] == [
        "/api/repos/create",
        "/api/validate-yaml",
        "/api/models/someone/my-flux-lora/preupload/main",
        "/api/models/someone/my-flux-lora/commit/main",
    ]
    assert all(r.authorization == f"Bearer {HF_TOKEN}" for r in hub.requests)
    created = hub.requests[0].json()
    assert (created["organization"], created["name"], created["visibility"]) == (
        "someone", "my-flux-lora", "public"  # created public, as Replicate's trainer does
    )  # fmt: skip
    (commit,) = hub.commits
    with tarfile.open(bundle) as tar:
        for name in (LORA_FILE, LORA_KOHYA_FILE):
            assert commit.files[name] == tar.extractfile(name).read(), name
    assert set(commit.files) == {LORA_FILE, LORA_KOHYA_FILE, MODEL_CARD_FILE}  # no record
    card = commit.files[MODEL_CARD_FILE].decode()
    assert card.startswith("---\n") and 'instance_prompt: "TOK"' in card and "- flux" in card
    assert "base_model:" not in card  # tiny-flux is no hub model
    assert "Uploaded the LoRA and its model card to " in response["logs"]


def wandb_records(folder: Path) -> list[dict]:
    """The records of the one offline run under `folder`, read by wandb's own reader."""
    (run_file,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_file)]
    listing = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return [json.loads(line) for line in listing.stdout.splitlines() if line.startswith("{")]


def test_weights_and_biases_gets_the_loss_samples_settings_and_weights(flux_training, wandb_dir):
    records = wandb_records(wandb_dir)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert (run["project"], run["display_name"]) == ("flux-tests", "tiny")
    config = run["config"]["update"]
    assert (config["lora_lr"], config["lora_rank"], config["max_train_steps"]) == (0.01, 4, 6)
    rows = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert [row["_step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert all(row["loss"] > 0 for row in rows)
    samples = {row["_step"]: row[f"samples/{SAMPLE_PROMPT}.path"] for row in rows
               if f"samples/{SAMPLE_PROMPT}.path" in row}  # fmt: skip
    assert set(samples) == {3, 6}  # every wandb_sample_interval steps and at the end
    (files,) = {p.parent for p in wandb_dir.glob("wandb/offline-run-*/files/media")}
    for path in samples.values():
        assert Image.open(files / path).size == (64, 64)
    saved = [f["path"] for r in records if r["type"] == "files" for f in r["files"]["files"]]
    assert {f"weights/step-00000{step}/{LORA_FILE}" for step in (3, 6)} <= set(saved)
    with tarfile.open(flux_training[0]) as tar:  # the end's weights are the tarball's LoRA
        final = (files / f"weights/step-000006/{LORA_FILE}").read_bytes()
        assert final == tar.extractfile(LORA_FILE).read()


def test_the_secrets_appear_in_no_log_record_or_file(flux_training, wandb_dir):
    bundle, response, server_log = flux_training
    places = {"response": json.dumps(response).encode(), "server log": server_log.read_bytes()}
    with tarfile.open(bundle) as tar:
        places.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    places.update({str(p): p.read_bytes() for p in wandb_dir.rglob("*") if p.is_file()})
    for secret in (HF_TOKEN, WANDB_KEY):
        assert not [place for place, data in places.items() if secret.encode() in data]
    with tarfile.open(bundle) as tar:
        inputs = json.load(tar.extractfile(TRAINING_CONFIG_FILE))["inputs"]
    assert inputs["hf_token"] == inputs["wandb_api_key"] == "**********"
