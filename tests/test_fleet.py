"""The fleet on a real local Ray cluster (127.0.0.1, tiny models): predictions routed by their
weights' URL give the single Cog container's outputs with few loads, a replica killed
mid-request is survived, cluster trainings equal `train()` and serve by URL, trainings cancel
queued or running, and server paths are refused word for word as the Cog server refuses them.

One cluster (two replicas, two LoRAs each) and one Cog server serve the whole module."""

import base64
import io
import json
import random
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray
import torch
import yaml
from PIL import Image
from ray import serve
from safetensors.torch import load

from benchmarks.fleet.run import SMOKE, compare
from fleet.app import app_builder
from fleet.cluster import APP_NAME, local_cluster
from fleet.ingress import LOADS_HEADER, REPLICA_HEADER
from fleet.options import FleetOptions, InvalidFleetOptions
from formats.bundle import EMBEDDINGS_PTI_FILE, LORA_FILE
from serving.cli import parse_inputs
from serving.schema import inspect_entry
from tests.cog_server import request, request_when_free, running_server
from tests.conftest import tiny_variables
from tests.trained_bundles import tar_folder, write_lora_bundle

SMALL = {"width": 64, "height": 64, "num_inference_steps": 2}
QUICK_TRAINING = {"resolution": 64, "train_batch_size": 2, "max_train_steps": 4,
                  "lr_warmup_steps": 0, "lora_rank": 4, "seed": 0}  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_ZIP = ROOT / "examples" / "cat_photos.zip"
LORAS = 4
LORAS_PER_REPLICA = 2
# Requests per LoRA, most popular first (Zipf-like: 1/k of the first's share).
POPULARITY = [19, 10, 6, 5]
REPLICA_PREFIX = f"SERVE_REPLICA::{APP_NAME}#GenerationReplica#"


@pytest.fixture(scope="module")
def environment(model_cache, tiny_models, tmp_path_factory):
    """The tiny models for the Cog server (this process's environment) and the cluster."""
    variables = {**tiny_variables(model_cache), "OMP_NUM_THREADS": "1"}
    with pytest.MonkeyPatch.context() as env:
        for name, value in variables.items():
            env.setenv(name, value)
        yield variables


@pytest.fixture(scope="module")
def cluster_tmp(tmp_path_factory) -> Path:
    """The replicas' temporary directory (TMPDIR), where each request's folders are."""
    return tmp_path_factory.mktemp("replicas-tmp")


@pytest.fixture(scope="module")
def cluster(environment, cluster_tmp):
    # Two replicas (1 CPU each) and the ingress (0.1) leave room for one training at a time: a
    # second one waits in Ray's queue.
    options = FleetOptions(
        min_replicas=2,
        max_replicas=2,
        loras_per_replica=LORAS_PER_REPLICA,
        gpus_per_replica=0,
        gpus_per_training=0,
    )
    variables = {**environment, "TMPDIR": str(cluster_tmp)}
    with local_cluster(options, 4, variables, log_to_driver=False) as running:
        yield running


@pytest.fixture(scope="module")
def cog_server(environment, tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("cog") / "predict.log") as url:
        yield url


@pytest.fixture(scope="module")
def lora_urls(tiny_models, file_server_module, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    urls = []
    for index in range(LORAS):
        bundle = write_lora_bundle(tiny_models["base"], folder / f"lora{index}", seed=10 + index)
        urls.append(file_server_module.add(f"/lora{index}.tar", tar_folder(bundle).read_bytes()))
    return urls


def post(url: str, inputs: dict):
    """(status, body, headers) of POST /predictions."""
    import urllib.error
    import urllib.request

    data = json.dumps({"input": {**SMALL, **inputs}}).encode()
    req = urllib.request.Request(
        f"{url}/predictions", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=600) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def pixels(body: dict) -> np.ndarray:
    assert body["status"] == "succeeded", body.get("error")
    data = base64.b64decode(body["output"][0].split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def cog_predict(url: str, inputs: dict) -> dict:
    status, body = request_when_free(f"{url}/predictions", {"input": {**SMALL, **inputs}})
    assert status == 200, body
    return body


def test_requests_follow_their_lora_and_match_the_cog_container(cluster, cog_server, lora_urls):
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    stream = [index for index, count in enumerate(POPULARITY) for _ in range(count)]
    random.Random(0).shuffle(stream)
    assert len(stream) == 40
    outputs, loads = {}, 0
    for number, index in enumerate(stream):
        inputs = {"replicate_weights": lora_urls[index], "seed": number % 2, "prompt": "TOK"}
        status, body, headers = post(cluster.url, inputs)
        assert status == 200, body
        outputs.setdefault((index, number % 2), []).append(pixels(body))
        loads += int(headers[LOADS_HEADER])
    # Each LoRA fits on one replica (two per replica): 4 loads when every request follows its
    # LoRA. A replica learns of another's load only when the controller passes it on, so a
    # request arriving before then may load on the other replica once more; round-robin over
    # two replicas with two slots each loads about every second request (~20).
    print(f"\nfleet: {len(stream)} requests over {LORAS} LoRAs, {loads} loads")
    assert LORAS <= loads <= 2 * LORAS
    for (index, seed), images in sorted(outputs.items()):
        cog = pixels(cog_predict(cog_server, {"replicate_weights": lora_urls[index],
                                              "seed": seed, "prompt": "TOK"}))  # fmt: skip
        # The same engine on the same inputs, seed and thread count: the same pixels.
        assert all(np.array_equal(cog, image) for image in images), (index, seed)


def test_server_paths_are_refused_as_the_cog_server_refuses_them(cluster, cog_server, tmp_path):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64)).save(secret)
    attempts = [
        {"image": str(secret), "prompt_strength": 0.5},
        {"image": str(tmp_path / "absent.png")},
        {"replicate_weights": "/"},
        {"replicate_weights": "file:///etc/passwd"},
        {"extra_lora": str(tmp_path)},
        {"loras": {str(tmp_path): 0.8}},
        {"num_outputs": 99},  # past the schema's bound: a 422 from both
    ]
    for inputs in attempts:
        status, fleet, _ = post(cluster.url, inputs)
        cog_status, cog = request_when_free(
            f"{cog_server}/predictions", {"input": {**SMALL, **inputs}}
        )
        assert status == cog_status, inputs
        if status == 422:
            assert fleet["detail"] == cog["detail"], inputs
            continue
        assert fleet["status"] == cog["status"] == "failed" and fleet.get("output") is None
        assert fleet["error"] == cog["error"], inputs


def replica_actors() -> dict[str, object]:
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return {n: ray.get_actor(n, "serve") for n in names if n.startswith(REPLICA_PREFIX)}


def running_replicas() -> int:
    deployment = serve.status().applications[APP_NAME].deployments["GenerationReplica"]
    return deployment.replica_states.get("RUNNING", 0)


def wait_for(condition, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_replica_killed_mid_request_is_replaced_and_leaves_no_state(
    cluster, cluster_tmp, lora_urls, file_server_module
):
    base = pixels(post(cluster.url, {"seed": 3})[1])
    # The request's image is served slowly: while the server has been asked for it, the
    # replica that asked is inside the request, and is killed there.
    image = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 60, 40)).save(image, "PNG")
    image_url = file_server_module.add("/slow.png", image.getvalue(), delay=2.0)
    inputs = {"image": image_url, "prompt_strength": 0.5, "seed": 4,
              "replicate_weights": lora_urls[0]}  # fmt: skip
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(body=post(cluster.url, inputs)))
    thread.start()
    wait_for(lambda: file_server_module.requests("/slow.png") >= 1)
    busy = [
        name
        for name, actor in replica_actors().items()
        if ray.get(actor.get_num_ongoing_requests.remote()) > 0
    ]
    assert len(busy) == 1
    during = list(cluster_tmp.iterdir())  # the request's folders, and the image's
    assert during
    ray.kill(replica_actors()[busy[0]], no_restart=True)
    thread.join()
    status, body, headers = answer["body"]
    assert status == 200
    print(f"\nkilled {busy[0]} mid-request: {body['status']} {headers[REPLICA_HEADER]}")
    # Sent once more, to the other replica: a result; or, if that one died too, an error
    # that says what happened and what to do.
    if body["status"] == "succeeded":
        assert headers[REPLICA_HEADER] != busy[0]
    else:
        assert "stopped" in body["error"] and "Send the request again" in body["error"]
    wait_for(lambda: running_replicas() == 2 and busy[0] not in replica_actors())
    for _ in range(4):  # both replicas, the new one included, serve the base as before
        assert np.array_equal(pixels(post(cluster.url, {"seed": 3})[1]), base)
    again = post(cluster.url, {"replicate_weights": lora_urls[1], "seed": 0})[1]
    assert pixels(again).shape == (64, 64, 3)
    # What the killed replica left in its request is gone (its process no longer runs).
    assert [folder for folder in during if folder.exists()] == []


def trainings(cluster, path: str, inputs: dict | None = None, asynchronous: bool = False):
    headers = {"Prefer": "respond-async"} if asynchronous else {}
    body = {"input": inputs} if inputs is not None else None
    method = "POST" if inputs is not None or path.endswith("cancel") else "GET"
    return request(method, f"{cluster.url}/trainings{path}", body, headers)


def tarball_tensors(data: bytes) -> dict[str, dict[str, torch.Tensor]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    return {name: load(files[name]) for name in (LORA_FILE, EMBEDDINGS_PTI_FILE)} | {
        "names": sorted(files)
    }


def test_a_cluster_training_equals_train_and_serves_by_its_url(
    cluster, file_server_module, environment
):
    photos = file_server_module.add("/photos.zip", EXAMPLE_ZIP.read_bytes())
    status, body = trainings(cluster, "", {"input_images": photos, **QUICK_TRAINING})
    assert status == 200 and body["status"] == "succeeded", body
    url = body["output"]
    assert url.startswith(cluster.shelf_url)
    import urllib.request

    with urllib.request.urlopen(url) as response:
        served = tarball_tensors(response.read())
    import train

    pairs = [f"{k}={v}" for k, v in {"input_images": EXAMPLE_ZIP, **QUICK_TRAINING}.items()]
    local = train.train(**parse_inputs(pairs, None, inspect_entry("train.py:train")))
    expected = tarball_tensors(Path(local).read_bytes())
    assert served["names"] == expected["names"]
    for name in (LORA_FILE, EMBEDDINGS_PTI_FILE):
        assert served[name].keys() == expected[name].keys()
        for key, value in expected[name].items():
            # One process each, the same inputs and seed: as the data-parallel test bounds
            # two runs of the same training (tests/test_train_processes.py).
            assert torch.allclose(value, served[name][key], rtol=1e-3, atol=1e-5), key
    status, answer, _ = post(cluster.url, {"replicate_weights": url, "prompt": "a TOK", "seed": 1})
    assert pixels(answer).shape == (64, 64, 3)


def test_a_queued_and_a_running_training_are_cancelled(cluster, file_server_module):
    photos = file_server_module.add("/photos-long.zip", EXAMPLE_ZIP.read_bytes())
    long_run = {"input_images": photos, **QUICK_TRAINING, "max_train_steps": 5000}
    _, first = trainings(cluster, "", long_run, asynchronous=True)
    _, second = trainings(cluster, "", long_run, asynchronous=True)
    # One training fits the cluster's free CPUs: the second waits for it.
    wait_for(lambda: trainings(cluster, f"/{first['id']}")[1]["status"] == "processing")
    assert trainings(cluster, f"/{second['id']}")[1]["status"] == "starting"
    _, queued = trainings(cluster, f"/{second['id']}/cancel")
    assert queued["status"] == "canceled" and queued["output"] is None
    _, running = trainings(cluster, f"/{first['id']}/cancel")
    assert running["status"] == "canceled" and running["output"] is None
    shelf = Path(cluster.options.tarball_folder)
    assert not (shelf / first["id"]).exists() and not (shelf / second["id"]).exists()
    assert trainings(cluster, "/train_0000/cancel")[0] == 404  # no such training


def test_a_training_whose_worker_dies_is_reported_failed(cluster, file_server_module):
    photos = file_server_module.add("/photos-killed.zip", EXAMPLE_ZIP.read_bytes())
    long_run = {"input_images": photos, **QUICK_TRAINING, "max_train_steps": 5000}
    _, run = trainings(cluster, "", long_run, asynchronous=True)
    wait_for(lambda: trainings(cluster, f"/{run['id']}")[1]["status"] == "processing")
    title = f"ray::{run['id']}"  # Ray names a worker's process after its task (the run's id)
    (worker,) = [p for p in psutil.process_iter(["cmdline"]) if title in (p.info["cmdline"] or [])]
    worker.kill()
    wait_for(lambda: trainings(cluster, f"/{run['id']}")[1]["status"] != "processing")
    _, body = trainings(cluster, f"/{run['id']}")
    assert body["status"] == "failed" and body["output"] is None
    assert (
        "stopped before it finished" in body["error"]
        and "Submit the training again" in body["error"]
    )
    assert not (Path(cluster.options.tarball_folder) / run["id"]).exists()


def test_the_serve_config_scales_replicas_within_the_operators_bounds():
    (application,) = yaml.safe_load((ROOT / "fleet" / "serve_config.yaml").read_text())[
        "applications"
    ]
    assert application["import_path"] == "fleet.app:app_builder"
    assert app_builder(application["args"]) is not None  # the args build the application
    deployment = FleetOptions.from_args(application["args"]).replica_deployment()
    assert deployment["autoscaling_config"] == {
        "min_replicas": 2,
        "max_replicas": 8,
        "target_ongoing_requests": 2,
    }
    assert deployment["ray_actor_options"]["num_gpus"] == 1
    fixed = FleetOptions.from_args({"min_replicas": "3", "max_replicas": "3"})  # `serve run a=b`
    assert fixed.replica_deployment()["num_replicas"] == 3
    with pytest.raises(InvalidFleetOptions, match="min_replicas=3, max_replicas=2"):
        FleetOptions(min_replicas=3, max_replicas=2)
    with pytest.raises(InvalidFleetOptions, match="Unknown fleet options"):
        FleetOptions.from_args({"replicas": 2})


def test_the_benchmark_prints_its_table_on_the_smoke_workload(cluster, model_cache):
    """benchmarks/fleet/run.py --smoke's comparison, against this module's cluster (the same
    replicas and LoRA bound) rather than a second one."""
    assert (SMOKE.replicas, SMOKE.loras_per_replica) == (2, LORAS_PER_REPLICA)
    table = compare(SMOKE, model_cache, cluster.url)
    print("\n" + table)
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in table.splitlines()}
    fleet, baseline = (
        rows["| Ray Serve, multiplexed by URL (2 replicas)"],
        rows["| 2 Cog containers, round-robin"],
    )
    asked = len(set(SMOKE.stream()))
    for requests, loads, downloads, *_ in (fleet, baseline):
        # Every LoRA asked for is loaded, and downloaded, at least once by each setup.
        assert int(requests) == SMOKE.requests and int(loads) >= asked and int(downloads) >= asked
