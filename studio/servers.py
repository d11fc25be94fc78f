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

from families import SDXL
from serving.containers import CONTAINERS, DEFAULT_CONTAINER
from serving.server import ServerOptions, start_server
from weights.network import ALLOWED_HOSTS_VARIABLE
from weights.settings import PROFILE_VARIABLE, TOY

# With no GPU the servers run the embedded models at the tiny profile's sizes (64 px, a few
# steps): seconds on a CPU. The toy SDXL (pictures that mean something) is the base of the
# container that trains SDXL; the other's is its family's tiny model.
EMBEDDED_ENVIRONMENT = {PROFILE_VARIABLE: "tiny", "HF_HUB_OFFLINE": "1"}
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


def server_environment(embedded: bool, container: str = DEFAULT_CONTAINER) -> dict[str, str]:
    """What the studio's own servers need beyond the operator's environment."""
    allowed = os.environ.get(ALLOWED_HOSTS_VARIABLE, "")
    hosts = ",".join(part for part in (allowed, STUDIO_HOST) if part)
    environment = {ALLOWED_HOSTS_VARIABLE: hosts}
    if embedded:
        environment |= EMBEDDED_ENVIRONMENT
        if SDXL in CONTAINERS[container].trains:
            environment["BASE_MODEL"] = TOY
    return environment


def family_base_models(container: str, embedded: bool) -> dict[str, str]:
    """The `base_model` a training names for each family `container` trains (its title ->
    the reference): the embedded models (the toy SDXL, other families' tiny models), or the
    families' default base models on a deployment with real ones."""

    def base_model(family) -> str:
        if not embedded:
            return family.default_base_model
        return TOY if family is SDXL else family.tiny_model

    return {family.title: base_model(family) for family in CONTAINERS[container].trains}


class StartedServers(contextlib.AbstractContextManager):
    """Cog's predict and train servers of `container`, started in the background; their logs
    go to `log_dir`. Readiness is the studio's to watch (setup may take minutes)."""

    def __init__(self, container: str, embedded: bool, log_dir: Path):
        self.container, self.embedded, self.log_dir = container, embedded, log_dir
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> ServerPair:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # start_server hands the servers this process's environment.
        os.environ.update(server_environment(self.embedded, self.container))
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
