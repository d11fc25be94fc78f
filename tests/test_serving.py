"""Cog's real HTTP server and the local CLI, on the tiny models."""

import base64
import io
import json
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from formats.bundle import BUNDLE_FILE, LORA_FILE
from serving import cli, client
from serving.containers import CONTAINERS
from serving.schema import SCHEMAS_DIR, build_schema, inspect_entry
from tests.cog_server import request, request_when_free, running_server
from tests.conftest import tiny_variables
from tests.receiver import Receiver

SMALL = {"width": 64, "height": 64, "num_inference_steps": 2}
LONG = {"width": 64, "height": 64, "num_inference_steps": 500}  # tens of seconds on CPU


@pytest.fixture(scope="module")
def server_env(model_cache, tiny_models):
    env = pytest.MonkeyPatch()
    for name, value in tiny_variables(model_cache).items():
        env.setenv(name, value)
    yield
    env.undo()


STARTUP_HEALTH: list[str] = []


@pytest.fixture(scope="module")
def predict_server(tmp_path_factory, server_env):
    log = tmp_path_factory.mktemp("server") / "predict.log"
    with running_server(log, health=STARTUP_HEALTH) as url:
        yield url


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def uploading_server(tmp_path_factory, server_env, receiver):
    log = tmp_path_factory.mktemp("server") / "upload.log"
    with running_server(log, upload_url=f"{receiver.url}/uploads/") as url:
        yield url


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.parametrize("container", CONTAINERS)
def test_each_containers_committed_schema_matches_the_code(container):
    entries = CONTAINERS[container]
    committed = json.loads((SCHEMAS_DIR / f"{container}.json").read_text())
    assert committed == build_schema(entries.predictor, entries.trainer)
    assert {"Input", "TrainingInput"} <= set(committed["components"]["schemas"])


def test_server_serves_its_schema_and_rejects_invalid_inputs(predict_server):
    assert STARTUP_HEALTH[0] == "STARTING" and STARTUP_HEALTH[-1] == "READY"
    status, schema = request("GET", f"{predict_server}/openapi.json")
    assert status == 200
    assert schema["components"]["schemas"]["Input"]["properties"]["num_outputs"]["maximum"] == 4

    for bad_input, field in [
        ({"num_outputs": 9}, "num_outputs"),
        ({"num_inference_steps": "many"}, "num_inference_steps"),
        ({"guidance_scale": 0.5}, "guidance_scale"),
    ]:
        status, body = request_when_free(f"{predict_server}/predictions", {"input": bad_input})
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
    status, response = request_when_free(f"{predict_server}/predictions", body)
    assert status == 200 and response["status"] == "succeeded", response.get("error")
    assert "Using seed: 3" in response["logs"]
    images = [_decode(uri) for uri in response["output"]]
    assert [image.size for image in images] == [(64, 64), (64, 64)]


def test_upload_url_receives_each_output_under_a_unique_name(uploading_server, receiver):
    body = {"input": {"prompt": "a cat", "num_outputs": 3, "seed": 1, **SMALL}}
    status, response = request_when_free(f"{uploading_server}/predictions", body)
    assert status == 200 and response["status"] == "succeeded", response.get("error")
    uploaded = {url.removeprefix(receiver.url) for url in response["output"]}
    assert len(uploaded) == 3 and uploaded <= set(receiver.received.uploads)
    for path in uploaded:
        assert Image.open(io.BytesIO(receiver.received.uploads[path])).size == (64, 64)


def test_async_prediction_sends_webhooks_and_put_is_idempotent(uploading_server, receiver):
    receiver.received.webhooks.clear()
    body = {
        "input": {"prompt": "a cat", "seed": 2, **SMALL},
        "webhook": f"{receiver.url}/hook",
        "webhook_events_filter": ["start", "logs", "completed"],
    }
    url = f"{uploading_server}/predictions/async-1"
    status, first = request_when_free(url, body, {"Prefer": "respond-async"}, method="PUT")
    assert status == 202 and first["id"] == "async-1"
    status, again = request("PUT", url, body, headers={"Prefer": "respond-async"})
    assert status == 202 and again["id"] == "async-1"  # the same prediction, not a second one

    wait_for(lambda: any(e["status"] == "succeeded" for e in receiver.received.webhooks))
    events = receiver.received.webhooks
    assert {e["id"] for e in events} == {"async-1"}
    assert sum(e["status"] == "succeeded" for e in events) == 1
    assert any("Using seed: 2" in (e.get("logs") or "") for e in events)


def test_cancel_mid_run_and_busy_server_answers_409(uploading_server, receiver):
    receiver.received.webhooks.clear()
    body = {"input": {"prompt": "a long one", **LONG}, "webhook": f"{receiver.url}/hook"}
    status, started = request_when_free(
        f"{uploading_server}/predictions", body, {"Prefer": "respond-async"}
    )
    assert status == 202
    wait_for(lambda: any(e["status"] == "processing" for e in receiver.received.webhooks))

    status, busy = request("POST", f"{uploading_server}/predictions", {"input": SMALL})
    assert status == 409

    status, _ = request("POST", f"{uploading_server}/predictions/{started['id']}/cancel")
    assert status == 200
    wait_for(lambda: any(e["status"] == "canceled" for e in receiver.received.webhooks))

    status, after = request_when_free(f"{uploading_server}/predictions", {"input": SMALL})
    assert status == 200 and after["status"] == "succeeded", after.get("error")


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


def test_cli_train_round_trip_writes_the_tarball(tiny_env, tmp_path, monkeypatch, capsys):
    photos = Path(__file__).resolve().parents[1] / "examples" / "cat_photos.zip"
    monkeypatch.chdir(tmp_path)
    quick = ["resolution=64", "train_batch_size=2", "max_train_steps=2", "lr_warmup_steps=0"]
    code = cli.main(["train", "-i", f"input_images=@{photos}", *(f"-i{q}" for q in quick)])
    assert code == 0, capsys.readouterr().err
    with tarfile.open(tmp_path / BUNDLE_FILE) as tar:
        assert LORA_FILE in tar.getnames()

    assert cli.main(["train", "-i", "input_images=@missing.zip"]) != 0
    assert "missing.zip does not exist" in capsys.readouterr().err


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


def test_cli_can_leave_an_optional_input_empty_and_names_local_files_as_the_operator(tmp_path):
    info = inspect_entry("train.py:train")
    photos = tmp_path / "p.zip"
    photos.write_bytes(b"PK")
    kwargs = cli.parse_inputs([f"input_images=@{photos}", "max_train_steps="], None, info)
    assert kwargs["max_train_steps"] is None  # empty: the epochs decide
    predict_info = inspect_entry("predict.py:Predictor")
    local = tmp_path / "weights.tar"
    kwargs = cli.parse_inputs(
        [f"replicate_weights={local}", f'loras={{"{local}": 0.5, "https://x/s.safetensors": 1}}'],
        None,
        predict_info,
    )
    assert kwargs["replicate_weights"] == local and isinstance(kwargs["replicate_weights"], Path)
    assert kwargs["loras"] == {local: 0.5, "https://x/s.safetensors": 1}
    with pytest.raises(cli.InputError, match="loras: .* is not valid JSON"):
        cli.parse_inputs(["loras={not json"], None, predict_info)


def test_cli_at_paths_name_files_for_file_inputs_and_read_text_for_the_rest(tmp_path):
    """`-i extra_lora=@style.safetensors` names the file (it is a text input that takes a URL
    over HTTP); `-i prompt=@prompt.txt` reads the prompt; a binary prompt file is refused."""
    info = inspect_entry("predict.py:Predictor")
    weights = tmp_path / "style.safetensors"
    weights.write_bytes(bytes(range(256)))  # not UTF-8
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("a photo of TOK")
    kwargs = cli.parse_inputs([f"extra_lora=@{weights}", f"prompt=@{prompt}"], None, info)
    assert kwargs["extra_lora"] == weights and isinstance(kwargs["extra_lora"], Path)
    assert kwargs["prompt"] == "a photo of TOK"
    with pytest.raises(cli.InputError, match="style.safetensors is not a text file"):
        cli.parse_inputs([f"negative_prompt=@{weights}"], None, info)
    with pytest.raises(cli.InputError, match="missing.safetensors does not exist"):
        cli.parse_inputs([f"extra_lora=@{tmp_path / 'missing.safetensors'}"], None, info)


def test_the_client_shows_the_servers_message_and_never_replaces_a_good_file(
    predict_server, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "mine.png"
    good.write_bytes(b"an image the user keeps")
    assert client.main([predict_server, "predict", "-i", "num_outputs=9", "-o", "mine.png"]) == 1
    error = capsys.readouterr().err
    assert "The server refused the inputs" in error and "num_outputs" in error
    assert good.read_bytes() == b"an image the user keeps"

    quick = ["-i", "width=64", "-i", "height=64", "-i", "num_inference_steps=1", "-o", "mine.png"]
    assert client.main([predict_server, "predict", *quick]) == 0
    assert Image.open(good).size == (64, 64)
    assert client.main(["127.0.0.1:9", "predict", "--wait", "2"]) == 1
    assert "was not ready within 2 s" in capsys.readouterr().err
