"""The pair of Cog servers the studio drives: given by URL (a deployment, or `make serve` and
`make serve-train` already running), or started here exactly as those targets start them
(serving/server.py), on free ports of 127.0.0.1, and stopped with the studio."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from serving.server import ServerOptions, start_server
from weights.network import ALLOWED_HOSTS_VARIABLE
from weights.settings import PROFILE_VARIABLE, TOY

# With no GPU the servers run the toy SDXL (pictures that mean something) with the other
# models embedded, and the tiny profile's sizes (64 px, a few steps): seconds on a CPU.
EMBEDDED_ENVIRONMENT = {"BASE_MODEL": TOY, PROFILE_VARIABLE: "tiny", "HF_HUB_OFFLINE": "1"}
# The predict server fetches the studio's models from the studio's own address.
STUDIO_HOST = "127.0.0.1"


@dataclass(frozen=True)
class ServerPair:
    predict_url: str
    train_url: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_environment(embedded: bool) -> dict[str, str]:
    """What the studio's own servers need beyond the operator's environment."""
    allowed = os.environ.get(ALLOWED_HOSTS_VARIABLE, "")
    hosts = ",".join(part for part in (allowed, STUDIO_HOST) if part)
    return {**(EMBEDDED_ENVIRONMENT if embedded else {}), ALLOWED_HOSTS_VARIABLE: hosts}


class StartedServers(contextlib.AbstractContextManager):
    """Cog's predict and train servers of `container`, started in the background; their logs
    go to `log_dir`. Readiness is the studio's to watch (setup may take minutes)."""

    def __init__(self, container: str, embedded: bool, log_dir: Path):
        self.container, self.embedded, self.log_dir = container, embedded, log_dir
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> ServerPair:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # start_server hands the servers this process's environment.
        os.environ.update(server_environment(self.embedded))
        urls = {}
        for mode in ("predict", "train"):
            port = free_port()
            options = ServerOptions(mode=mode, port=port, container=self.container)
            with open(self.log_dir / f"{mode}.log", "wb") as log:
                self.processes.append(start_server(options, log_file=log))
            urls[mode] = f"http://127.0.0.1:{port}"
        return ServerPair(urls["predict"], urls["train"])

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
