"""What a hostile client and a migrating Replicate or OctoAI user send, over Cog's real server:
requests name files only by URL, number inputs are bounded, `loras` stacks by URL."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.cog_server import request, request_when_free, running_server
from tests.conftest import tiny_variables
from tests.trained_bundles import tar_folder, write_kohya_lora, write_lora_bundle
from weights.settings import LOCAL_DIRS_VARIABLE

SMALL = {"width": 64, "height": 64, "num_inference_steps": 2, "seed": 5}


def png_bytes(colour=(200, 60, 40), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (64, 64), colour).save(buffer, "PNG")
    return buffer.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server_files(tmp_path_factory):
    """A folder on the server's disk with an image in it (what a client must not reach)."""
    folder = tmp_path_factory.mktemp("server-files")
    (folder / "secret.png").write_bytes(png_bytes((10, 200, 10)))
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache, tiny_models, server_files):
    """A predict server whose operator allows one folder (SDXL_TUNER_LOCAL_DIRS)."""
    allowed = tmp_path_factory.mktemp("allowed")
    (allowed / "photo.png").write_bytes(png_bytes((40, 40, 220)))
    with pytest.MonkeyPatch.context() as env:
        for name, value in tiny_variables(model_cache).items():
            env.setenv(name, value)
        env.setenv(LOCAL_DIRS_VARIABLE, str(allowed))
        with running_server(tmp_path_factory.mktemp("server") / "predict.log") as url:
            yield url, allowed


def predict(url: str, inputs: dict):
    status, response = request_when_free(f"{url}/predictions", {"input": {**SMALL, **inputs}})
    assert status == 200, response
    return response


def output_pixels(response) -> np.ndarray:
    assert response["status"] == "succeeded", response.get("error")
    data = base64.b64decode(response["output"][0].split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_server_paths_in_a_request_are_refused_naming_the_input(server, server_files, model_cache):
    url, _ = server
    secret = str(server_files / "secret.png")
    attempts = {
        "image": {"image": secret, "prompt_strength": 0.5},
        "mask": {"image": data_uri(png_bytes()), "mask": secret},
        "replicate_weights": {"replicate_weights": "/"},
        "extra_lora": {"extra_lora": str(model_cache)},
        "loras": {"loras": {str(model_cache / "store"): 0.8}},
    }
    for name, inputs in attempts.items():
        value = inputs[name] if name != "loras" else next(iter(inputs["loras"]))
        response = predict(url, inputs)
        assert response["status"] == "failed" and response.get("output") is None, name
        # The whole answer is the refusal: no listing, no hint whether the path exists.
        refusal = f"{name}: {value!r} is not an http(s) URL or a data URI."
        message = response["error"].split("InvalidRequestError: ", 1)[1]  # after Cog's prefix
        assert message.startswith(refusal) and message.count("'") == 2, message
    missing = predict(url, {"image": str(server_files / "absent.png")})["error"]
    present = predict(url, {"image": secret})["error"]
    assert missing.replace("absent", "secret") == present  # exists or not: the same answer


def test_urls_and_data_uris_work_and_the_operator_may_allow_a_folder(server, server_files):
    url, allowed = server
    from_data = output_pixels(
        predict(url, {"image": data_uri(png_bytes()), "prompt_strength": 0.5})
    )
    assert from_data.shape == (64, 64, 3)
    from_allowed = predict(url, {"image": str(allowed / "photo.png"), "prompt_strength": 0.5})
    assert output_pixels(from_allowed).shape == (64, 64, 3)
    outside = predict(url, {"image": str(allowed / ".." / server_files.name / "secret.png")})
    assert "not an http(s) URL" in outside["error"]  # `..` does not leave the allowed folder


def test_every_integer_input_is_bounded_in_the_schema(server):
    url, _ = server
    status, schema = request("GET", f"{url}/openapi.json")
    assert status == 200
    for name in ("Input", "TrainingInput"):
        properties = schema["components"]["schemas"][name]["properties"]
        integers = {k: p for k, p in properties.items() if p.get("type") == "integer"}
        assert integers and all("minimum" in p and "maximum" in p for p in integers.values()), name


@pytest.mark.parametrize("container", ["sdxl", "flux"])
def test_a_number_past_its_bounds_is_a_422_on_each_train_server(
    container, tmp_path, model_cache, monkeypatch
):
    """1e308 is a valid JSON number that no float input can train with: the schema refuses it
    for every number input, naming the input, before train() runs."""
    for name, value in tiny_variables(model_cache).items():
        monkeypatch.setenv(name, value)
    photos = "https://example.invalid/photos.zip"  # never fetched: validation comes first
    with running_server(tmp_path / "train.log", mode="train", container=container) as url:
        schema = request("GET", f"{url}/openapi.json")[1]["components"]["schemas"]
        properties = schema["TrainingInput"]["properties"]
        numbers = [name for name, p in properties.items() if p.get("type") == "number"]
        assert "learning_rate" in numbers or "lora_lr" in numbers
        for name in numbers:
            for value in (1e308, -1e308):
                body = {"input": {"input_images": photos, name: value}}
                status, answer = request_when_free(f"{url}/trainings", body)
                assert status == 422 and answer["detail"][0]["loc"][-1] == name, (name, answer)


def test_seeds_outside_the_range_are_refused_by_the_schema(server):
    url, _ = server
    for seed in (2**64, 2**53, -1):
        status, body = request_when_free(f"{url}/predictions", {"input": {**SMALL, "seed": seed}})
        assert status == 422 and body["detail"][0]["loc"][-1] == "seed", (seed, body)
    largest = predict(url, {"seed": 2**53 - 1})
    assert largest["status"] == "succeeded" and f"Using seed: {2**53 - 1}" in largest["logs"]


def test_loras_stack_by_url_as_octoai_sends_them(server, file_server, tiny_models, tmp_path):
    url, _ = server
    style = file_server.add(
        "/style.safetensors", write_kohya_lora(tiny_models["base"], tmp_path / "s.safetensors", 6)
    )
    other = file_server.add(
        "/other.safetensors", write_kohya_lora(tiny_models["base"], tmp_path / "o.safetensors", 9)
    )
    plain = output_pixels(predict(url, {"prompt": "a cat"}))
    one = output_pixels(predict(url, {"prompt": "a cat", "loras": {style: 0.9}}))
    two = output_pixels(predict(url, {"prompt": "a cat", "loras": {style: 0.9, other: 0.7}}))
    assert len({plain.tobytes(), one.tobytes(), two.tobytes()}) == 3
    assert np.array_equal(output_pixels(predict(url, {"prompt": "a cat"})), plain)  # none left
    assert file_server.requests("/style.safetensors") == 1  # cached like replicate_weights
    bad = predict(url, {"loras": {style: 9}})
    assert bad["status"] == "failed" and "between 0 and 4.0" in bad["error"]


def test_weights_the_server_could_not_load_at_start_are_tried_again_and_named(
    tmp_path, model_cache, tiny_models, file_server
):
    """COG_WEIGHTS that fail at start-up (here a URL that answers 404) leave the server READY;
    a request that would use them says why it cannot, and once they can be fetched they are
    used without a restart."""
    weights_url = file_server.url("/version/trained_model.tar")
    with pytest.MonkeyPatch.context() as env:
        for name, value in tiny_variables(model_cache).items():
            env.setenv(name, value)
        with running_server(tmp_path / "predict.log", weights=weights_url) as url:
            failed = predict(url, {"prompt": "a photo of TOK"})
            assert failed["status"] == "failed"
            assert "COG_WEIGHTS" in failed["error"] and "404" in failed["error"]
            bundle = write_lora_bundle(tiny_models["base"], tmp_path / "bundle", seed=3)
            file_server.add("/version/trained_model.tar", tar_folder(bundle))
            healed = predict(url, {"prompt": "a photo of TOK"})
    assert healed["status"] == "succeeded", healed.get("error")
    assert "Trained tokens for TOK in the prompt." in healed["logs"]
