"""Train mode over HTTP, serving the trained version, and a soak of mixed predictions."""

import base64
import io
import json
import os
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from formats.bundle import (
    BUNDLE_FILE,
    CHECKPOINTS_DIR,
    EMBEDDINGS_PTI_FILE,
    LORA_FILE,
    MODEL_CARD_FILE,
    SPECIAL_PARAMS_FILE,
)
from tests.cog_server import request, request_when_free, running_server
from tests.conftest import tiny_variables
from tests.predict_helpers import one_torch_thread, predict_arrays, same, tiny_predictor
from tests.receiver import Receiver
from tests.trained_bundles import tar_folder, write_lora_bundle

ROOT = Path(__file__).resolve().parents[1]
QUICK_TRAINING = {
    "resolution": 64,
    "train_batch_size": 2,
    "max_train_steps": 4,
    "lr_warmup_steps": 0,
    "lora_rank": 4,
    "seed": 0,
}
SMALL = {"width": 64, "height": 64, "num_inference_steps": 2}
SOAK_PREDICTIONS = 100
SOAK_RSS_GROWTH_BOUND = 150 * 2**20  # after warm-up; a leak of one bundle per request exceeds it


@pytest.fixture(scope="module")
def work_tmp(tmp_path_factory):
    """TMPDIR of the servers: where train() makes its work folders."""
    return tmp_path_factory.mktemp("server-tmp")


@pytest.fixture(scope="module")
def server_env(model_cache, tiny_models, work_tmp):
    env = pytest.MonkeyPatch()
    for name, value in {**tiny_variables(model_cache), "TMPDIR": str(work_tmp)}.items():
        env.setenv(name, value)
    yield
    env.undo()


@pytest.fixture(scope="module")
def train_server(tmp_path_factory, server_env):
    with running_server(tmp_path_factory.mktemp("server") / "train.log", mode="train") as url:
        yield url


def wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def decode(uri: str) -> bytes:
    return base64.b64decode(uri.split(",", 1)[1])


def test_cancel_a_training_mid_run_leaves_nothing_behind(train_server, file_server, work_tmp):
    data_url = file_server.add("/photos.zip", ROOT / "examples" / "cat_photos.zip")
    body = {"input": {"input_images": data_url, **QUICK_TRAINING, "max_train_steps": 5000}}
    with Receiver() as receiver:
        body["webhook"] = f"{receiver.url}/hook"
        status, started = request_when_free(
            f"{train_server}/trainings", body, {"Prefer": "respond-async"}
        )
        assert status == 202
        # the start summary is printed as the loop begins: cancel mid-run
        wait_for(
            lambda: any("Training: " in (e.get("logs") or "") for e in receiver.received.webhooks)
        )
        status, _ = request("POST", f"{train_server}/trainings/{started['id']}/cancel")
        assert status == 200
        wait_for(lambda: any(e["status"] == "canceled" for e in receiver.received.webhooks))
    assert not list(work_tmp.glob(f"sdxl-train-*/{BUNDLE_FILE}"))
    assert not list(work_tmp.glob("sdxl-train-*"))


def test_train_over_http_then_serve_the_trained_version(
    train_server, file_server, tmp_path, server_env
):
    data_url = file_server.add("/photos.zip", ROOT / "examples" / "cat_photos.zip")
    body = {"input": {"input_images": data_url, **QUICK_TRAINING}}
    status, response = request_when_free(f"{train_server}/trainings", body)
    assert status == 200 and response["status"] == "succeeded", response.get("error")

    bundle = tmp_path / BUNDLE_FILE
    bundle.write_bytes(decode(response["output"]))
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
    assert {LORA_FILE, EMBEDDINGS_PTI_FILE, SPECIAL_PARAMS_FILE} <= names

    prompt = {"input": {"prompt": "a photo of TOK on the beach", "seed": 7, **SMALL}}
    outputs = {}
    for version, weights in (("base", None), ("trained", str(bundle))):
        log = tmp_path / f"{version}.log"
        with running_server(log, weights=weights) as url:
            status, response = request_when_free(f"{url}/predictions", prompt)
            assert status == 200 and response["status"] == "succeeded", response.get("error")
            outputs[version] = np.asarray(Image.open(io.BytesIO(decode(response["output"][0]))))
    assert np.abs(outputs["trained"].astype(int) - outputs["base"]).mean() > 0.5


def test_soak_mixed_predictions_keep_memory_and_disk_bounded(
    tmp_path, server_env, tiny_models, file_server, work_tmp
):
    bundles = [
        file_server.add(
            f"/bundle-{seed}.tar",
            tar_folder(
                write_lora_bundle(tiny_models["base"], tmp_path / f"bundle-{seed}", seed=seed)
            ),
        )
        for seed in (1, 2)
    ]
    image = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 80, 40)).save(image, "PNG")
    image_uri = "data:image/png;base64," + base64.b64encode(image.getvalue()).decode()
    mask = io.BytesIO()
    Image.new("L", (64, 64), 255).save(mask, "PNG")
    mask_uri = "data:image/png;base64," + base64.b64encode(mask.getvalue()).decode()
    modes = [
        {},
        {"image": image_uri, "prompt_strength": 0.6},
        {"image": image_uri, "mask": mask_uri},
        {"refine": "expert_ensemble_refiner", "num_inference_steps": 4},
    ]

    with running_server(tmp_path / "soak.log") as url:
        worker = _worker_process(url)
        rss = []
        for index in range(SOAK_PREDICTIONS):
            inputs = {"prompt": "a photo of TOK", "seed": index, **SMALL, **modes[index % 4]}
            if index % 3:
                inputs["replicate_weights"] = bundles[index % 3 - 1]
            status, response = request_when_free(f"{url}/predictions", {"input": inputs})
            assert status == 200 and response["status"] == "succeeded", (index, response)
            rss.append(worker.memory_info().rss)
            # Only the last request's images stay in the temporary directory.
            assert len(list(work_tmp.glob("sdxl-tuner-outputs-*"))) == 1
    warmed = max(rss[:20])
    print(f"worker RSS: after warm-up {warmed / 2**20:.0f} MiB, final {rss[-1] / 2**20:.0f} MiB")
    assert max(rss[20:]) - warmed < SOAK_RSS_GROWTH_BOUND


def _worker_process(base_url: str) -> psutil.Process:
    """The predictor runs in a worker subprocess of the server: measure that one."""
    port = int(base_url.rsplit(":", 1)[1])
    for connection in psutil.net_connections(kind="tcp"):
        if connection.laddr.port == port and connection.status == psutil.CONN_LISTEN:
            server = psutil.Process(connection.pid)
            children = server.children(recursive=True)
            return max(children, key=lambda p: p.memory_info().rss) if children else server
    raise RuntimeError(f"no process listens on {port} (pid {os.getpid()})")


def _dead(process: psutil.Process) -> bool:
    """Gone, or a zombie its parent has not reaped yet."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_trainings_leave_nothing_behind_but_the_last_tarball(train_server, file_server, work_tmp):
    data_url = file_server.add("/photos.zip", ROOT / "examples" / "cat_photos.zip")
    body = {"input": {"input_images": data_url, **QUICK_TRAINING}}
    seen = []
    for _ in range(3):
        status, response = request_when_free(f"{train_server}/trainings", body)
        assert status == 200 and response["status"] == "succeeded", response.get("error")
        assert f"{BUNDLE_FILE}: " in response["logs"] and " MiB." in response["logs"]
        handed = list(work_tmp.glob("sdxl-tuner-training-*"))
        assert len(handed) == 1 and [p.name for p in handed[0].iterdir()] == [BUNDLE_FILE]
        assert not list(work_tmp.glob("sdxl-train-*"))  # the work folder is gone
        seen.append((len(list(work_tmp.iterdir())), tree_bytes(work_tmp)))
    assert seen[0] == seen[1] == seen[2], seen  # no growth from one training to the next

    bundle = decode(response["output"])
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        names = tar.getnames()
    assert not any(name.startswith(CHECKPOINTS_DIR) for name in names)  # final weights only


def test_a_request_names_its_photos_and_base_model_only_by_url(train_server, file_server):
    photos = str(ROOT / "examples" / "cat_photos.zip")  # a path on the server's disk
    for inputs, refusal in (
        ({"input_images": photos}, f"input_images: {photos!r} is not an http(s) URL"),
        (
            {"input_images": file_server.add("/p.zip", Path(photos)), "base_model": "/"},
            "base_model: '/' is not an http(s) URL",
        ),
    ):
        status, response = request_when_free(
            f"{train_server}/trainings", {"input": {**QUICK_TRAINING, **inputs}}
        )
        assert status == 200 and response["status"] == "failed", response
        assert refusal in response["error"], response["error"]
    # A relative folder of the server's checkout, named like a hub id, is looked up on the hub.
    inputs = {
        "input_images": file_server.add("/q.zip", Path(photos)),
        "base_model": "toyworld/weights",
    }
    status, response = request_when_free(
        f"{train_server}/trainings", {"input": {**QUICK_TRAINING, **inputs}}
    )
    assert response["status"] == "failed" and "from the Hugging Face hub" in response["error"]


def test_a_trigger_word_is_one_short_word_other_than_the_inserted_tokens(train_server, file_server):
    photos = file_server.add("/t.zip", ROOT / "examples" / "cat_photos.zip")
    body = {"input": {**QUICK_TRAINING, "input_images": photos, "token_string": "x" * 100_000}}
    status, response = request_when_free(f"{train_server}/trainings", body)
    assert status == 422 and "token_string" in str(response["detail"])  # before any work
    body["input"]["token_string"] = "<s0>"
    status, response = request_when_free(f"{train_server}/trainings", body)
    assert status == 200 and response["status"] == "failed"
    assert "<s0>, <s1>, ... are the tokens training inserts" in response["error"]


def test_a_training_fetches_only_public_or_allowed_addresses(train_server, file_server):
    photos = ROOT / "examples" / "cat_photos.zip"
    metadata, private = "http://169.254.169.254/photos.zip", "http://10.0.0.1/sdxl.tar"
    for inputs, refusal in (
        ({"input_images": metadata}, f"input_images: {metadata} is refused: its host"),
        (
            {"input_images": file_server.add("/p.zip", photos), "base_model": private},
            f"{private} is refused: its host",
        ),
    ):
        status, response = request_when_free(
            f"{train_server}/trainings", {"input": {**QUICK_TRAINING, **inputs}}
        )
        assert response["status"] == "failed" and refusal in response["error"], response
    # 127.0.0.1 is on this server's allow-list; the scheme's case does not matter.
    upper = file_server.add("/u.zip", photos).replace("http://", "HTTP://")
    inputs = {**QUICK_TRAINING, "input_images": upper, "dry_run": True}
    status, response = request_when_free(f"{train_server}/trainings", {"input": inputs})
    assert response["status"] == "succeeded", response.get("error")


def test_a_failed_training_leaves_the_temporary_directory_as_it_was(
    train_server, file_server, work_tmp, tmp_path
):
    not_images = tmp_path / "notes.zip"
    with zipfile.ZipFile(not_images, "w") as archive:
        archive.writestr("notes.txt", "no photos here")
    cases = {
        file_server.add_html("/s/share-link"): "input_images: http",  # a web page, not the zip
        file_server.add("/notes.zip", not_images): "notes.zip has no usable image",
    }
    for url, message in cases.items():
        before = set(work_tmp.iterdir())  # (another server's last outputs may lie there)
        status, response = request_when_free(
            f"{train_server}/trainings", {"input": {**QUICK_TRAINING, "input_images": url}}
        )
        assert response["status"] == "failed" and message in response["error"], response
        assert str(work_tmp) not in response["error"]
        # Nothing new: no upload, work folder or copy of Cog's, and no tarball handed over.
        assert set(work_tmp.iterdir()) <= before


def test_a_trigger_other_than_tok_follows_into_captions_tokens_and_prompts(
    train_server, file_server, tmp_path, model_cache, capsys
):
    photos = tmp_path / "photos.zip"
    with zipfile.ZipFile(photos, "w") as archive:
        for index, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (90, 90, 9)]):
            buffer = io.BytesIO()
            Image.new("RGB", (96, 96), colour).save(buffer, "PNG")
            archive.writestr(f"photo-{index}.png", buffer.getvalue())
    inputs = {"input_images": file_server.add("/sks.zip", photos), **QUICK_TRAINING}
    inputs.update(token_string="sks", ti_lr=5e-2, lora_lr=3e-2)

    status, dry = request_when_free(
        f"{train_server}/trainings", {"input": {**inputs, "dry_run": True}}
    )
    assert dry["status"] == "succeeded", dry.get("error")
    with tarfile.open(fileobj=io.BytesIO(decode(dry["output"]))) as tar:
        captions = [image["caption"] for image in json.load(tar.extractfile("plan.json"))["images"]]
    assert captions and all(c.startswith("a photo of sks") and "TOK" not in c for c in captions)

    status, response = request_when_free(f"{train_server}/trainings", {"input": inputs})
    assert response["status"] == "succeeded", response.get("error")
    bundle = tmp_path / BUNDLE_FILE
    bundle.write_bytes(decode(response["output"]))
    with tarfile.open(bundle) as tar:
        token_map = json.load(tar.extractfile(SPECIAL_PARAMS_FILE))
        card = tar.extractfile(MODEL_CARD_FILE).read().decode()
    assert list(token_map) == ["sks"] and "write `sks`" in card and "TOK" not in card

    with one_torch_thread():
        predictor = tiny_predictor(model_cache, weights=str(bundle))
        with_trigger = predict_arrays(predictor, prompt="a photo of sks")
        assert "Trained tokens for sks in the prompt." in capsys.readouterr().out
        tokens = predict_arrays(predictor, prompt=f"a photo of {token_map['sks']}")
        tok = predict_arrays(predictor, prompt="a photo of TOK")
    assert same(with_trigger, tokens) and not same(with_trigger, tok)  # sks is the trained tokens


def test_what_a_killed_worker_left_is_removed_when_the_server_starts_again(
    tmp_path, server_env, file_server, monkeypatch
):
    server_tmp = tmp_path / "server-tmp"
    server_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(server_tmp))
    data_url = file_server.add("/photos.zip", ROOT / "examples" / "cat_photos.zip")
    body = {"input": {"input_images": data_url, **QUICK_TRAINING, "max_train_steps": 5000}}
    with running_server(tmp_path / "killed.log", mode="train") as url, Receiver() as receiver:
        worker = _worker_process(url)
        body["webhook"] = f"{receiver.url}/hook"
        status, _ = request("POST", f"{url}/trainings", body, headers={"Prefer": "respond-async"})
        assert status == 202
        wait_for(
            lambda: any("Training: " in (e.get("logs") or "") for e in receiver.received.webhooks)
        )
        assert list(server_tmp.glob(f"sdxl-train-{worker.pid}-*/upload/input_images/*.zip"))
        worker.kill()  # SIGKILL: nothing of the training's own clean-up runs
        wait_for(lambda: _dead(worker))
        assert list(server_tmp.glob(f"sdxl-train-{worker.pid}-*"))
    with running_server(tmp_path / "restarted.log", mode="train"):
        assert list(server_tmp.iterdir()) == []  # its work folder and hand-off folder are gone


def test_a_data_parallel_training_is_cancelled_with_its_processes(
    tmp_path, server_env, file_server, work_tmp, monkeypatch
):
    monkeypatch.setenv("SDXL_TUNER_TRAINING_PROCESSES", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU processes even where a GPU exists
    data_url = file_server.add("/photos.zip", ROOT / "examples" / "cat_photos.zip")
    body = {"input": {"input_images": data_url, **QUICK_TRAINING, "max_train_steps": 5000}}
    with running_server(tmp_path / "parallel.log", mode="train") as url, Receiver() as receiver:
        server = _worker_process(url)
        body["webhook"] = f"{receiver.url}/hook"
        status, started = request_when_free(f"{url}/trainings", body, {"Prefer": "respond-async"})
        assert status == 202

        def logged(text: str) -> bool:
            return any(text in (e.get("logs") or "") for e in receiver.received.webhooks)

        wait_for(lambda: logged("processes 2"), timeout=240)  # the launched processes' summary
        assert logged("Training data-parallel in 2 processes")
        launched = [p for p in server.children(recursive=True) if "training" in p.cmdline()]
        assert len(launched) >= 2
        status, _ = request("POST", f"{url}/trainings/{started['id']}/cancel")
        assert status == 200
        wait_for(lambda: any(e["status"] == "canceled" for e in receiver.received.webhooks))
        wait_for(lambda: not any(p.is_running() for p in launched), timeout=60)
    assert not list(work_tmp.glob("sdxl-train-*"))
