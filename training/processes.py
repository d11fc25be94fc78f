"""Data-parallel training from inside one call: `train()` runs in Cog's single worker process,
so to use several GPUs it launches `python -m training` under `accelerate launch` and relays
the launch's output to its own log (which Cog shows). Cancelling the call stops the launch.

The global batch stays what was asked: `train_batch_size` is split evenly over the processes
(as many as divide it), so a run on N GPUs steps like the run on one, N times faster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

from training.config import TrainingConfig
from weights.runtime import Runtime

MIXED_PRECISION = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "no"}


def processes_for(config: TrainingConfig, available: int) -> int:
    """The most processes, up to `available`, that split the batch evenly."""
    return max(n for n in range(1, available + 1) if config.train_batch_size % n == 0)


def launch_command(
    config: TrainingConfig,
    processes: int,
    dataset: Path,
    run_dir: Path,
    base_folder: Path,
    output: Path,
    runtime: Runtime,
) -> list[str]:
    """`accelerate launch` of `python -m training` for `processes` processes, each with its
    share of the batch, on the base model's (already resolved) local folder."""
    per_process = replace(config, train_batch_size=config.train_batch_size // processes)
    settings = [
        arg
        for name, value in per_process.to_json().items()
        for arg in ("--set", f"{name}={json.dumps(value)}")
    ]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision",
               MIXED_PRECISION[runtime.dtype], "--dynamo_backend", "no", "--multi_gpu"]  # fmt: skip
    command += ["-m", "training", str(dataset), str(run_dir), "--base-model", str(base_folder)]
    return command + ["--output", str(output), *settings]


def run_launch(command: list[str], cwd: Path) -> None:
    """Run the launch, printing its output as it comes; stop it if this call is cancelled
    (Cog raises a BaseException in the caller) or fails."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=_python_path(cwd))
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
