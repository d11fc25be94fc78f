"""A local Ray cluster on 127.0.0.1 running the fleet on the embedded tiny models: what
`make fleet` starts, and what the tests and the benchmark run against.

    python -m fleet.cluster --port 8000 --replicas 2 --loras-per-replica 2

It serves Cog's routes at http://127.0.0.1:<port> (`/predictions`, `/trainings`) and the
trained tarballs at a file server on 127.0.0.1, until interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

# Ray's own services (GCS, raylet, object store) on 127.0.0.1 as well, not on the machine's
# address: a one-node cluster no other machine joins. Ray reads this when it is imported, so
# a process that imports Ray before this module (the tests) sets it first (tests/conftest.py).
LOOPBACK_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
os.environ.setdefault(LOOPBACK_VARIABLE, "0")

import ray  # noqa: E402
from ray import serve  # noqa: E402

from fleet.app import build_app  # noqa: E402
from fleet.options import FleetOptions  # noqa: E402
from fleet.shelf import serve_folder  # noqa: E402
from weights.network import ALLOWED_HOSTS_VARIABLE  # noqa: E402
from weights.settings import PROFILE_VARIABLE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
APP_NAME = "sdxl-tuner"
NAMESPACE = "sdxl-tuner"


@dataclass(frozen=True)
class LocalCluster:
    url: str  # the fleet's HTTP front
    shelf_url: str  # where trained tarballs are fetched
    options: FleetOptions


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def tiny_environment() -> dict[str, str]:
    """The replicas' and trainings' environment: the embedded tiny models, downloads allowed
    from 127.0.0.1 (the shelf), one torch thread per process (the CPUs are shared)."""
    return {PROFILE_VARIABLE: "tiny", ALLOWED_HOSTS_VARIABLE: HOST, "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def local_cluster(
    options: FleetOptions,
    num_cpus: int,
    environment: dict[str, str],
    shelf_folder: Path | None = None,
    port: int | None = None,
    log_to_driver: bool = True,
) -> Iterator[LocalCluster]:
    """Start Ray on 127.0.0.1 with `num_cpus` logical CPUs and no GPUs, the shelf's file
    server, and the fleet; yield where they listen; stop them all. `log_to_driver`: the
    replicas' and trainings' logs printed here too (each worker's are in Ray's log folder)."""
    with contextlib.ExitStack() as stack:
        if shelf_folder is None:
            shelf_folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        shelf_url = stack.enter_context(serve_folder(shelf_folder, HOST))
        options = replace(options, tarball_folder=str(shelf_folder), tarball_url=shelf_url)
        # Workers import this checkout first (the venv may point at another).
        python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        ray.init(
            num_cpus=num_cpus,
            num_gpus=0,
            include_dashboard=False,
            namespace=NAMESPACE,
            log_to_driver=log_to_driver,
            runtime_env={"env_vars": {**environment, "PYTHONPATH": python_path}},
        )
        stack.callback(ray.shutdown)
        port = port or free_port()
        serve.start(http_options={"host": HOST, "port": port})
        stack.callback(serve.shutdown)
        serve.run(build_app(options), name=APP_NAME, route_prefix="/")
        yield LocalCluster(f"http://{HOST}:{port}", shelf_url, options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--container", default="sdxl")
    parser.add_argument("--replicas", type=int, default=2, help="minimum replica count")
    parser.add_argument("--max-replicas", type=int, default=None, help="autoscaling bound")
    parser.add_argument("--loras-per-replica", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=4, help="logical CPUs Ray schedules")
    parser.add_argument("--shelf", type=Path, default=None, help="tarball folder (kept)")
    args = parser.parse_args()
    options = FleetOptions(
        container=args.container,
        min_replicas=args.replicas,
        max_replicas=args.max_replicas or args.replicas,
        loras_per_replica=args.loras_per_replica,
        gpus_per_replica=0,
        gpus_per_training=0,
    )
    environment = {**tiny_environment(), **_passed_through()}
    with local_cluster(options, args.cpus, environment, args.shelf, args.port) as cluster:
        print(f"Serving {cluster.url} (/predictions, /trainings); tarballs at {cluster.shelf_url}")
        print("Ctrl-C stops the cluster.")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


def _passed_through() -> dict[str, str]:
    """Variables the operator set for the models (a cache folder, a safety checker)."""
    return {k: v for k, v in os.environ.items() if k.startswith(("SDXL_TUNER_", "HF_"))}


if __name__ == "__main__":
    main()
