"""Data-parallel training from inside one call: `train()` runs in Cog's single worker process,
so to use several GPUs it launches `python -m training` under `accelerate launch` and relays
the launch's output to its own log (which Cog shows). Cancelling the call stops the launch.

Every process trains (`data_parallel`): each takes ceil(batch / N) images of every step, and
the steps shrink so that the run sees as many images as the one-process run would, N times
sooner. A batch N divides keeps its size and its steps: the run steps as on one GPU.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from training.config import TrainingConfig
from weights.runtime import Runtime

MIXED_PRECISION = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "no"}


@dataclass(frozen=True)
class DataParallelRecipe:
    """How a run's batch and steps map onto N processes; recorded in training_config.json."""

    processes: int
    batch_size: int  # the requested train_batch_size
    per_process_batch: int  # ceil(batch_size / processes)
    steps: int | None  # the requested max_train_steps (None: from epochs)

    @property
    def global_batch(self) -> int:
        return self.per_process_batch * self.processes

    @property
    def step_scale(self) -> float:
        """Requested images per step over the images each step now takes."""
        return self.batch_size / self.global_batch

    def scaled(self, steps: int) -> int:
        """A count of steps (the run's, or an interval) with the same images seen: 0 stays
        0 (none); anything else is at least 1."""
        return 0 if steps == 0 else max(1, round(steps * self.step_scale))

    def config(self, config: TrainingConfig) -> TrainingConfig:
        """Each process's settings: its share of the batch, and the run's steps, warmup,
        checkpoint and sample intervals scaled to the same images."""
        steps = config.max_train_steps
        return replace(
            config,
            train_batch_size=self.per_process_batch,
            max_train_steps=None if steps is None else self.scaled(steps),
            lr_warmup_steps=self.scaled(config.lr_warmup_steps),
            checkpointing_steps=self.scaled(config.checkpointing_steps),
            sample_every=self.scaled(config.sample_every),
            wandb_save_interval=self.scaled(config.wandb_save_interval),
            extra={**config.extra, "data_parallel": self.record()},
        )

    def record(self) -> dict:
        scaled = None if self.steps is None else self.scaled(self.steps)
        return {**asdict(self), "global_batch": self.global_batch, "steps_run": scaled}

    def describe(self) -> str:
        text = (
            f"Training data-parallel in {self.processes} processes, a batch of "
            f"{self.per_process_batch} each."
        )
        if self.step_scale == 1 or self.steps is None:
            return text
        return (
            f"{text} Global batch {self.global_batch} for batch size {self.batch_size}: "
            f"{self.scaled(self.steps)} steps instead of {self.steps}, about as many images seen."
        )


def data_parallel(config: TrainingConfig, processes: int) -> DataParallelRecipe:
    """Every one of `processes` trains, with an equal share of each step's images."""
    per_process = math.ceil(config.train_batch_size / processes)
    return DataParallelRecipe(
        processes, config.train_batch_size, per_process, config.max_train_steps
    )


def launch_command(
    config: TrainingConfig,
    recipe: DataParallelRecipe,
    dataset: Path,
    run_dir: Path,
    base_folder: Path,
    output: Path,
    runtime: Runtime,
) -> list[str]:
    """`accelerate launch` of `python -m training` for the recipe's processes, each with its
    share of the batch, on the base model's (already resolved) local folder."""
    settings = [
        arg
        for name, value in recipe.config(config).to_json().items()
        for arg in ("--set", f"{name}={json.dumps(value)}")
    ]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes",
               str(recipe.processes), "--num_machines", "1", "--mixed_precision",
               MIXED_PRECISION[runtime.dtype], "--dynamo_backend", "no", "--multi_gpu"]  # fmt: skip
    command += ["-m", "training", str(dataset), str(run_dir), "--base-model", str(base_folder)]
    return command + ["--output", str(output), *settings]


def run_launch(command: list[str], cwd: Path, secrets: dict[str, str] | None = None) -> None:
    """Run the launch, printing its output as it comes; stop it if this call is cancelled
    (Cog raises a BaseException in the caller) or fails. `secrets`: environment variables
    for the launched processes alone (not this process's environment, which outlives the
    call)."""
    env = dict(os.environ, **(secrets or {}), PYTHONUNBUFFERED="1", PYTHONPATH=_python_path(cwd))
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: stopped as a whole
    )
    try:
        for line in process.stdout:
            print(line, end="", flush=True)
        code = process.wait()
    except BaseException:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        raise
    if code != 0:
        raise RuntimeError(f"Training in several processes failed (exit code {code}); see above.")


def _python_path(root: Path) -> str:
    return os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
