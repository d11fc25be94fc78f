"""Start Cog's real HTTP server (coglet) from the project root, in predict or train mode, for
one container (SDXL / SD 1.5 or FLUX.1, serving/containers.py).

Used by `make serve` / `make serve-train` and by the end-to-end tests, so both run the
server exactly the same way. The container's schema is written first (coglet reads it from
`.cog/openapi_schema.json` during its setup), so it never goes stale.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from serving.containers import CONTAINERS, DEFAULT_CONTAINER
from serving.schema import ROOT, write_schema
from weights.references import is_remote

MODES = ("predict", "train")


@dataclass(frozen=True)
class ServerOptions:
    mode: str = "predict"
    port: int = 5000
    host: str = "127.0.0.1"
    weights: str | None = None  # COG_WEIGHTS: serve a trained version
    upload_url: str | None = None  # PUT output files here instead of inlining them
    container: str = DEFAULT_CONTAINER  # a key of CONTAINERS


def server_command(options: ServerOptions) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run coglet for `options`."""
    if options.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {options.mode!r}")
    if options.container not in CONTAINERS:
        raise ValueError(f"container must be one of {tuple(CONTAINERS)}: {options.container!r}")
    container = CONTAINERS[options.container]
    env = dict(os.environ)
    # Cog's worker subprocess runs a bare `python`: this interpreter's folder comes first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PORT"] = str(options.port)
    env["COG_PREDICT_TYPE_STUB"] = container.predictor
    env["COG_TRAIN_TYPE_STUB"] = container.trainer
    env.pop("COG_WEIGHTS", None)
    if options.weights:  # a local path is the operator's; coglet runs from the project folder
        local = not is_remote(options.weights)
        env["COG_WEIGHTS"] = str(Path(options.weights).resolve()) if local else options.weights
    command = [sys.executable, "-m", "cog.server.http", "--host", options.host]
    if options.mode == "train":
        command += ["--x-mode", "train"]
    if options.upload_url:
        command += ["--upload-url", options.upload_url]
    return command, env


def start_server(options: ServerOptions, log_file=None) -> subprocess.Popen:
    """Start coglet in the background from the project root (it reads .cog/ from there)."""
    write_schema(CONTAINERS[options.container])
    command, env = server_command(options)
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_until_ready(
    base_url: str, process: subprocess.Popen, timeout: float = 180, seen: list | None = None
) -> dict:
    """Poll /health-check until READY; fail early if the server died or setup failed.
    Each status polled is appended to `seen`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Cog server exited with code {process.returncode} before READY.")
        try:
            with urllib.request.urlopen(f"{base_url}/health-check", timeout=5) as response:
                health = json.load(response)
            if seen is not None:
                seen.append(health["status"])
            if health["status"] == "READY":
                return health
            if health["status"] == "SETUP_FAILED":
                raise RuntimeError(f"Cog server setup failed: {health['setup'].get('logs', '')}")
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Cog server at {base_url} not READY after {timeout:.0f}s.")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run Cog's HTTP server for this project.")
    parser.add_argument("--mode", choices=MODES, default="predict")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 5000)))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--weights", default=os.environ.get("COG_WEIGHTS"))
    parser.add_argument("--upload-url", default=None)
    parser.add_argument("--container", choices=CONTAINERS, default=DEFAULT_CONTAINER)
    args = parser.parse_args()
    options = ServerOptions(
        args.mode, args.port, args.host, args.weights, args.upload_url, args.container
    )
    write_schema(CONTAINERS[options.container])
    command, env = server_command(options)
    os.chdir(ROOT)
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
