"""Cog's real HTTP server and the local CLI, on the tiny models."""

import base64
import io
import json

import pytest
from PIL import Image

from serving import cli
from serving.schema import SCHEMA_PATH, build_schema, inspect_entry
from tests.cog_server import request, running_server


@pytest.fixture(scope="module")
def predict_server(tmp_path_factory, model_cache, tiny_models):
    env = pytest.MonkeyPatch()
    env.setenv("BASE_MODEL", "tiny")
    env.setenv("REFINER_MODEL", "tiny")
    env.setenv("SDXL_TUNER_CACHE", str(model_cache))
    env.setenv("HF_HUB_OFFLINE", "1")
    log = tmp_path_factory.mktemp("server") / "predict.log"
    try:
        with running_server(log) as url:
            yield url
    finally:
        env.undo()


def test_committed_schema_matches_the_code():
    committed = json.loads(SCHEMA_PATH.read_text())
    trainer = (
        None if "TrainingInput" not in committed["components"]["schemas"] else "train.py:train"
    )
    assert committed == build_schema(trainer_ref=trainer)


def test_server_serves_its_schema_and_rejects_invalid_inputs(predict_server):
    status, schema = request("GET", f"{predict_server}/openapi.json")
    assert status == 200
    assert schema["components"]["schemas"]["Input"]["properties"]["num_outputs"]["maximum"] == 4

    for bad_input, field in [
        ({"num_outputs": 9}, "num_outputs"),
        ({"num_inference_steps": "many"}, "num_inference_steps"),
        ({"guidance_scale": 0.5}, "guidance_scale"),
    ]:
        status, body = request("POST", f"{predict_server}/predictions", {"input": bad_input})
        assert status == 422, bad_input
        assert body["detail"][0]["loc"][-1] == field


def test_sync_prediction_returns_images_as_data_uris(predict_server):
    body = {
        "input": {
            "prompt": "a cat",
            "width": 64,
            "height": 64,
            "num_outputs": 2,
            "num_inference_steps": 2,
            "seed": 3,
        }
    }
    status, response = request("POST", f"{predict_server}/predictions", body)
    assert status == 200 and response["status"] == "succeeded", response.get("error")
    assert "Using seed: 3" in response["logs"]
    images = [_decode(uri) for uri in response["output"]]
    assert [image.size for image in images] == [(64, 64), (64, 64)]


def test_cli_predict_round_trip_and_bad_input(tiny_env, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("a photo of a cat")
    code = cli.main(
        [
            "predict",
            "-i",
            f"prompt=@{prompt_file}",
            "-i",
            "width=64",
            "-i",
            "height=64",
            "-i",
            "num_inference_steps=2",
            "-i",
            "seed=5",
        ]
    )
    assert code == 0
    assert Image.open(tmp_path / "output.0.png").size == (64, 64)

    assert cli.main(["predict", "-i", "num_outputs=9"]) != 0
    assert "num_outputs" in capsys.readouterr().err
    assert cli.main(["predict", "-i", "no_such_input=1"]) != 0
    assert "Unknown input 'no_such_input'" in capsys.readouterr().err


def test_cli_inputs_follow_the_declared_types():
    info = inspect_entry("predict.py:Predictor")
    kwargs = cli.parse_inputs(["num_outputs=2", "guidance_scale=3.5"], '{"prompt": "x"}', info)
    assert kwargs["num_outputs"] == 2 and kwargs["guidance_scale"] == 3.5
    assert kwargs["prompt"] == "x" and kwargs["seed"] is None
    with pytest.raises(cli.InputError, match="not a valid integer"):
        cli.parse_inputs(["num_outputs=two"], None, info)


def _decode(uri: str) -> Image.Image:
    header, data = uri.split(",", 1)
    assert header.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(data)))
