"""A real Cog HTTP server (coglet) for end-to-end tests, run exactly as `make serve` runs it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from serving.server import ROOT, ServerOptions, start_server, wait_until_ready


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(
    log_path: Path,
    mode: str = "predict",
    health: list | None = None,
    env: dict[str, str] | None = None,
    **options,
):
    """Start coglet on a free port, wait for READY, yield its base URL, then stop it.
    The health statuses seen while waiting are appended to `health`. With `env`, the server
    starts as `make serve` starts it (`python -m serving.server`) in that environment, and
    this process imports no entry file (one imported here declares the defaults of the
    profile it was imported under)."""
    port = free_port()
    with open(log_path, "wb") as log:
        if env is None:
            process = start_server(ServerOptions(mode=mode, port=port, **options), log_file=log)
        else:
            process = start_server_process(ServerOptions(mode=mode, port=port, **options), env, log)
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(base_url, process, seen=health)
            yield base_url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except Exception:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def request(method: str, url: str, body: dict | None = None, headers: dict | None = None):
    """(status, parsed JSON body) of one HTTP request; errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=600) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def request_when_free(
    url: str, body: dict, headers: dict | None = None, method: str = "POST", attempts: int = 50
):
    """A request that starts work, retrying a 409: coglet answers a request that arrives just
    as the previous one's response is sent, before its slot is free again, with 'At capacity'
    (docs/serving.md gives clients the same advice)."""
    for _ in range(attempts):
        status, response = request(method, url, body, headers)
        if status != 409:
            return status, response
        time.sleep(0.1)
    return status, response


def start_server_process(options: ServerOptions, env: dict[str, str], log) -> subprocess.Popen:
    command = [sys.executable, "-m", "serving.server", "--mode", options.mode]
    command += ["--port", str(options.port), "--container", options.container]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
