"""Trainings on the cluster: each a Ray task that reserves the GPUs it trains on (1, or N
data-parallel processes), waits in Ray's queue while the cluster has none free, can be
cancelled queued or running, and publishes its tarball on the shelf (fleet/shelf.py), whose
URL the generation replicas load: train → tarball URL → servable.

The task runs the container's own `train()` on the arguments Cog's worker would pass for
the same `/trainings` input, so a cluster training is the container's training. One
`TrainingQueue` actor submits and owns every training, so any client can ask about or
cancel any of them; it answers in Cog's training statuses.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.exceptions import RayError, RayTaskError, TaskCancelledError

from fleet.cog_api import call_arguments, prediction_id
from fleet.shelf import TarballShelf
from serving.containers import CONTAINERS
from serving.schema import inspect_entry
from weights.settings import TRAINING_PROCESSES_VARIABLE

QUEUE_NAME = "sdxl-tuner-trainings"
# How long a cancelled training has to stop on its own (train() cleans up when interrupted)
# before its worker is killed: an interrupt that lands in Ray's own code, as the task starts,
# can be lost.
CANCEL_GRACE_SECONDS = 20


# A worker process per training (max_calls=1): nothing it set or loaded outlives it.
@ray.remote(max_retries=0, max_calls=1)
def run_training(container: str, values: dict, gpus: int, shelf: TarballShelf, run_id: str, queue):
    """The container's train() on `values`, on the `gpus` Ray reserved; returns the URL."""
    queue.started.remote(run_id, os.getpid())
    if gpus > 1:  # data-parallel over the reserved GPUs
        os.environ[TRAINING_PROCESSES_VARIABLE] = str(gpus)
    module, name = CONTAINERS[container].trainer.split(":")
    info = inspect_entry(CONTAINERS[container].trainer)
    train = getattr(importlib.import_module(Path(module).stem), name)
    tarball = train(**call_arguments(info, values))
    return shelf.publish(Path(tarball), run_id)


@dataclass
class Run:
    ref: ray.ObjectRef
    status: str = "starting"  # Cog's statuses: starting (queued), processing, succeeded, ...
    pid: int | None = None  # the worker training it, once it started
    output: str | None = None  # the tarball's URL
    error: str | None = None
    cancelled: bool = False  # asked to stop: whatever it returns is withdrawn

    def body(self, run_id: str) -> dict:
        body = {"id": run_id, "status": self.status, "output": self.output}
        return {**body, "error": self.error} if self.error else body


@ray.remote(num_cpus=0)
class TrainingQueue:
    def __init__(self, container: str, shelf: TarballShelf, cpus_per_training: float = 1.0):
        self.container, self.shelf, self.cpus = container, shelf, cpus_per_training
        self.runs: dict[str, Run] = {}

    def submit(self, values: dict, gpus: int = 1) -> str:
        """Queue a training on `gpus` GPUs; returns its id at once."""
        run_id = prediction_id("train")
        me = ray.get_runtime_context().current_actor
        options = {"num_gpus": gpus, "num_cpus": self.cpus, "name": run_id}
        task = run_training.options(**options)
        ref = task.remote(self.container, values, gpus, self.shelf, run_id, me)
        self.runs[run_id] = Run(ref)
        return run_id

    def started(self, run_id: str, pid: int) -> None:
        run = self.runs[run_id]
        if run.status == "starting":
            run.status, run.pid = "processing", pid

    async def status(self, run_id: str) -> dict | None:
        """The training's body now; None for an id this queue never gave."""
        run = self.runs.get(run_id)
        if run is None:
            return None
        ready, _ = ray.wait([run.ref], timeout=0)
        if ready:
            await self._finish(run_id)
        return run.body(run_id)

    async def wait(self, run_id: str) -> dict:
        """The training's final body: its URL, or why it failed or was canceled."""
        await self._finish(run_id)
        return self.runs[run_id].body(run_id)

    async def cancel(self, run_id: str) -> dict | None:
        """Take a queued training off the queue, or stop a running one (its worker is
        interrupted, so train() cleans up and stops its data-parallel processes)."""
        run = self.runs.get(run_id)
        if run is None:
            return None
        if run.status in ("starting", "processing"):
            run.cancelled = True
            ray.cancel(run.ref)
            if not await self._stops(run, CANCEL_GRACE_SECONDS):
                ray.cancel(run.ref, force=True)  # the interrupt was lost: kill its worker
        return await self.wait(run_id)

    @staticmethod
    async def _stops(run: Run, seconds: float) -> bool:
        """Whether the training's task ends within `seconds` (the actor keeps answering)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while not ray.wait([run.ref], timeout=0)[0]:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    async def _finish(self, run_id: str) -> None:
        run = self.runs[run_id]
        if run.status not in ("starting", "processing"):
            return
        try:
            run.output, run.status = await run.ref, "succeeded"
        except TaskCancelledError:
            run.status = "canceled"
        except RayTaskError as error:  # train() raised: its own message
            cause = error.cause if error.cause is not None else error
            if isinstance(cause, KeyboardInterrupt) or run.cancelled:  # stopped by cancel()
                run.status = "canceled"
            else:
                run.status, run.error = "failed", f"{type(cause).__name__}: {cause}"
        except RayError as error:  # the worker or its node died (or cancel() killed it)
            if run.cancelled:
                run.status = "canceled"
            else:
                run.status, run.error = "failed", worker_lost(error)
        if run.cancelled and run.status == "succeeded":  # it finished as it was cancelled
            self.shelf.withdraw(run_id)
            run.output, run.status = None, "canceled"


def worker_lost(error: RayError) -> str:
    return (
        f"The worker running this training stopped before it finished ({type(error).__name__}"
        ", e.g. killed for memory or its node lost); nothing was published. Submit the "
        "training again."
    )


def start_queue(container: str, shelf: TarballShelf, cpus_per_training: float = 1.0):
    """The cluster's training queue (one per cluster, found by name by later callers)."""
    return TrainingQueue.options(
        name=QUEUE_NAME, get_if_exists=True, lifetime="detached", max_concurrency=64
    ).remote(container, shelf, cpus_per_training)
