"""What an operator decides about the generation deployment: the `args` of the Serve
config's application (docs/fleet.md), checked before anything starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fleet.shelf import TarballShelf
from serving.containers import CONTAINERS, DEFAULT_CONTAINER


class InvalidFleetOptions(ValueError):
    """An option is out of range; the message names it and what to give."""


@dataclass(frozen=True)
class FleetOptions:
    container: str = DEFAULT_CONTAINER  # whose requests and base-model family the replicas serve
    # Replica count: fixed when equal, else Serve's autoscaler keeps it between the two,
    # aiming at `target_ongoing_requests` in flight per replica.
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0
    # Trained weights each replica keeps loaded: the engine's LRU bound and the count Serve
    # routes by (serve.multiplexed's max_num_models_per_replica), one number.
    loras_per_replica: int = 8
    gpus_per_replica: float = 1.0  # 0 on CPU-only clusters (tests, `make fleet`)
    cpus_per_replica: float = 1.0
    # Requests a replica holds: it runs one at a time, as a Cog container, and the rest wait
    # there, beside the weights they need; past this many, Serve sends a request for the same
    # weights to another replica (which loads them) rather than queue it longer.
    max_ongoing_requests: int = 4
    ingress_replicas: int = 1
    # Trainings (`POST /trainings`): the folder every training node writes tarballs to and
    # the URL the replicas fetch that folder at (fleet/shelf.py); empty: no trainings.
    tarball_folder: str = ""
    tarball_url: str = ""
    cpus_per_training: float = 1.0
    # GPUs a training reserves unless its request asks for more (`?gpus=N`: N data-parallel
    # processes); 0 on CPU-only clusters.
    gpus_per_training: int = 1

    def __post_init__(self):
        problems = []
        if self.container not in CONTAINERS:
            problems.append(f"container={self.container!r}: use one of {', '.join(CONTAINERS)}")
        if not 1 <= self.min_replicas <= self.max_replicas:
            problems.append(
                f"min_replicas={self.min_replicas}, max_replicas={self.max_replicas}: need "
                "1 <= min_replicas <= max_replicas"
            )
        for name in ("loras_per_replica", "max_ongoing_requests", "ingress_replicas"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: at least 1")
        for name in (
            "gpus_per_replica",
            "cpus_per_replica",
            "cpus_per_training",
            "gpus_per_training",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)}: not negative")
        if bool(self.tarball_folder) != bool(self.tarball_url):
            problems.append("tarball_folder and tarball_url: give both (trainings) or neither")
        if self.target_ongoing_requests <= 0:
            problems.append(f"target_ongoing_requests={self.target_ongoing_requests}: above 0")
        if problems:
            raise InvalidFleetOptions("Invalid fleet options:\n- " + "\n- ".join(problems))

    @classmethod
    def from_args(cls, args: dict) -> FleetOptions:
        """From a Serve config's `args` (YAML values, or text from `serve run a=b`)."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise InvalidFleetOptions(f"Unknown fleet options {unknown}; known: {list(known)}.")
        values = {}
        for name, value in args.items():
            kind = type(getattr(cls(), name))
            try:
                values[name] = kind(value)
            except ValueError:
                raise InvalidFleetOptions(f"{name}={value!r}: give a {kind.__name__}.") from None
        return cls(**values)

    def replica_deployment(self) -> dict:
        """Serve deployment options of the generation replicas."""
        scaling: dict = {"num_replicas": self.min_replicas}
        if self.max_replicas > self.min_replicas:
            scaling = {
                "autoscaling_config": {
                    "min_replicas": self.min_replicas,
                    "max_replicas": self.max_replicas,
                    "target_ongoing_requests": self.target_ongoing_requests,
                }
            }
        return {
            **scaling,
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {
                "num_gpus": self.gpus_per_replica,
                "num_cpus": self.cpus_per_replica,
            },
        }

    def shelf(self) -> TarballShelf | None:
        if not self.tarball_folder:
            return None
        return TarballShelf(Path(self.tarball_folder), self.tarball_url)

    def to_args(self) -> dict:
        return asdict(self)
