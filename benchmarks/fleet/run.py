"""Serving many users' LoRAs from N replicas: Ray Serve multiplexing by the weights' URL
(fleet/) against what an operator would otherwise build, N plain Cog containers behind a
round-robin balancer, on the same request stream, side by side in one run.

    .venv/bin/python benchmarks/fleet/run.py            # tiny models, CPU: a few minutes
    .venv/bin/python benchmarks/fleet/run.py --smoke    # fewer requests (CI)

The stream: requests over M LoRAs with Zipf popularity (the k-th most popular asked 1/k^s as
often), sent by C clients at once. Each replica (or container) keeps K LoRAs in memory, the
same bound on both sides (`loras_per_replica`; `SDXL_TUNER_LOADED_WEIGHTS` for Cog). Measured:
LoRA loads into a replica's memory (a download or a disk read, then preparing the tensors),
downloads seen by the file server, switches (a request whose LoRA is not its replica's
previous one), latency from sending to the answer (queueing included), and throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fleet.cluster import local_cluster  # noqa: E402
from fleet.ingress import LOADS_HEADER, REPLICA_HEADER  # noqa: E402
from fleet.options import FleetOptions  # noqa: E402
from tests.cog_server import running_server  # noqa: E402
from tests.conftest import tiny_variables  # noqa: E402
from tests.fileserver import FileServer  # noqa: E402
from tests.trained_bundles import tar_folder, write_lora_bundle  # noqa: E402
from weights.embedded.tiny import ensure_tiny_model  # noqa: E402
from weights.settings import LOADED_WEIGHTS_VARIABLE  # noqa: E402


@dataclass(frozen=True)
class Workload:
    loras: int  # M
    replicas: int  # N
    loras_per_replica: int  # K
    requests: int
    clients: int  # C, requests in flight at once
    zipf: float = 1.1  # s
    seed: int = 0

    def stream(self) -> list[int]:
        weights = [1 / (rank + 1) ** self.zipf for rank in range(self.loras)]
        return random.Random(self.seed).choices(range(self.loras), weights, k=self.requests)


FULL = Workload(loras=8, replicas=2, loras_per_replica=4, requests=160, clients=4)
SMOKE = Workload(loras=4, replicas=2, loras_per_replica=2, requests=30, clients=2)
INPUTS = {"width": 64, "height": 64, "num_inference_steps": 2, "prompt": "a photo of TOK"}


@dataclass
class Answer:
    lora: int
    replica: str
    seconds: float
    loads: int = 0  # trained weights the fleet's replica loaded for it


@dataclass(frozen=True)
class Result:
    name: str
    answers: list[Answer]
    loads: int
    downloads: int
    wall: float

    def row(self) -> str:
        seconds = sorted(a.seconds for a in self.answers)
        p95 = seconds[min(len(seconds) - 1, round(0.95 * (len(seconds) - 1)))]
        cells = [self.name, len(self.answers), self.loads, self.downloads, switches(self.answers),
                 f"{statistics.median(seconds):.3f}", f"{p95:.3f}",
                 f"{len(self.answers) / self.wall:.2f}"]  # fmt: skip
        return "| " + " | ".join(str(cell) for cell in cells) + " |"


def switches(answers: list[Answer]) -> int:
    """Requests whose LoRA differs from the one their replica served just before."""
    previous: dict[str, int] = {}
    count = 0
    for answer in answers:
        count += previous.get(answer.replica, answer.lora) != answer.lora
        previous[answer.replica] = answer.lora
    return count


def post(url: str, inputs: dict, retry_busy: bool) -> tuple[dict, dict]:
    """(body, headers) of POST /predictions; a busy Cog server's 409 is asked again, as a
    balancer that queues would."""
    data = json.dumps({"input": inputs}).encode()
    while True:
        req = urllib.request.Request(
            f"{url}/predictions", data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=600) as response:
                body = json.loads(response.read())
                if body.get("status") != "succeeded":
                    raise RuntimeError(f"{url}: {body.get('error')}")
                return body, response.headers
        except urllib.error.HTTPError as error:
            if not (retry_busy and error.code == 409):
                raise
            time.sleep(0.01)


def send_stream(stream: list[int], urls: list[str], target, clients: int) -> tuple[list, float]:
    """Send every request of `stream` (LoRA indices) with `clients` in flight; `target(i)`:
    the URL request i goes to. Returns the answers in sending order and the wall time."""
    done: list[Answer | None] = [None] * len(stream)

    def one(number: int) -> None:
        lora = stream[number]
        inputs = {**INPUTS, "replicate_weights": urls[lora], "seed": number}
        url, cog = target(number)
        started = time.perf_counter()
        _, headers = post(url, inputs, retry_busy=cog)
        seconds = time.perf_counter() - started
        if cog:
            done[number] = Answer(lora, url, seconds)
        else:
            loads = int(headers[LOADS_HEADER])
            done[number] = Answer(lora, headers[REPLICA_HEADER], seconds, loads)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(len(stream))))
    return done, time.perf_counter() - started


def fleet_options(workload: Workload) -> FleetOptions:
    return FleetOptions(
        min_replicas=workload.replicas,
        max_replicas=workload.replicas,
        loras_per_replica=workload.loras_per_replica,
        gpus_per_replica=0,
        gpus_per_training=0,
    )


def run_fleet(workload: Workload, urls, stream, files: FileServer, fleet_url: str) -> Result:
    before = lora_downloads(workload, files)
    answers, wall = send_stream(stream, urls, lambda n: (fleet_url, False), workload.clients)
    downloads = lora_downloads(workload, files) - before
    name = f"Ray Serve, multiplexed by URL ({workload.replicas} replicas)"
    return Result(name, answers, sum(a.loads for a in answers), downloads, wall)


def lora_downloads(workload: Workload, files: FileServer) -> int:
    return sum(files.requests(f"/lora{i}.tar") for i in range(workload.loras))


def run_round_robin(workload: Workload, urls, stream, files: FileServer, environment) -> Result:
    before = lora_downloads(workload, files)
    logs = []
    with contextlib.ExitStack() as stack:
        servers = []
        for _ in range(workload.replicas):
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            # Its own disk, as a container on its own machine has.
            stack.enter_context(_environment({**environment, "SDXL_TUNER_CACHE": str(folder)}))
            logs.append(folder / "server.log")
            servers.append(stack.enter_context(running_server(logs[-1])))
        answers, wall = send_stream(
            stream, urls, lambda n: (servers[n % len(servers)], True), workload.clients
        )
        # Each load into memory asks the model store for the weights once.
        pattern = re.compile(r"model store: cache (hit|miss) for .*lora\d+\.tar")
        loads = sum(len(pattern.findall(log.read_text())) for log in logs)
    downloads = lora_downloads(workload, files) - before
    name = f"{workload.replicas} Cog containers, round-robin"
    return Result(name, answers, loads, downloads, wall)


@contextlib.contextmanager
def _environment(variables: dict[str, str]):
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def compare(workload: Workload, model_cache: Path, fleet_url: str | None = None) -> str:
    """Both setups on one stream; the table as text. `fleet_url`: a running fleet with the
    workload's replicas and LoRA bound (else a local cluster is started for it)."""
    base = ensure_tiny_model("base", model_cache)
    ensure_tiny_model("refiner", model_cache)
    environment = {
        **tiny_variables(model_cache),
        "OMP_NUM_THREADS": "1",
        LOADED_WEIGHTS_VARIABLE: str(workload.loras_per_replica),
    }
    stream = workload.stream()
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        files = stack.enter_context(FileServer())
        urls = []
        for index in range(workload.loras):
            bundle = write_lora_bundle(base, folder / f"lora{index}", seed=100 + index)
            urls.append(files.add(f"/lora{index}.tar", tar_folder(bundle).read_bytes()))
        stack.enter_context(_environment(environment))
        if fleet_url is None:
            cpus = workload.replicas + 1  # each replica, the ingress and the training queue
            cluster = local_cluster(fleet_options(workload), cpus, environment, log_to_driver=False)
            fleet_url = stack.enter_context(cluster).url
        fleet = run_fleet(workload, urls, stream, files, fleet_url)
        baseline = run_round_robin(workload, urls, stream, files, environment)
    popularity = [stream.count(i) for i in range(workload.loras)]
    return "\n".join([
        f"{workload.requests} requests over M={workload.loras} LoRAs (Zipf s={workload.zipf}: "
        f"{popularity}), N={workload.replicas}, K={workload.loras_per_replica} LoRAs per "
        f"replica, {workload.clients} clients; tiny SDXL, 64x64, 2 steps, CPU",
        "",
        "| setup | requests | LoRA loads | downloads | switches | p50 s | p95 s | req/s |",
        "|---|---|---|---|---|---|---|---|",
        fleet.row(),
        baseline.row(),
        "",
        f"LoRA loads: {baseline.loads / max(fleet.loads, 1):.1f}x fewer with multiplexing.",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="fewer requests (CI)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    model_cache = Path(os.environ.get("SDXL_TUNER_CACHE") or tempfile.mkdtemp())
    print(compare(SMOKE if args.smoke else FULL, model_cache))


if __name__ == "__main__":
    main()
