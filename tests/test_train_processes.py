"""Training across processes: a run killed mid-way resumes to the uninterrupted result (a
LoRA+ run too, in a process that hashes strings otherwise), and `accelerate launch` with 2 CPU
processes trains data-parallel and writes one bundle."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, load_file

from families import FLUX, SD15
from formats.bundle import (
    BUNDLE_FILE,
    CHECKPOINTS_DIR,
    EMBEDDINGS_PTI_FILE,
    LORA_FILE,
    TRAINING_CONFIG_FILE,
)
from tests.train_helpers import make_dataset, one_thread, small_config  # noqa: F401 (autouse)
from training.loop import latest_checkpoint, run_training
from weights.runtime import pick_runtime
from weights.settings import TINY

TINY_SD15 = SD15.tiny_model
TINY_FLUX = FLUX.tiny_model

ROOT = Path(__file__).resolve().parents[1]
RUN = {"max_train_steps": 12, "checkpointing_steps": 3, "lora_lr": 1e-3}


def cli_environment(model_cache, base_model: str = TINY) -> dict:
    env = dict(os.environ, BASE_MODEL=base_model, SDXL_TUNER_CACHE=str(model_cache))
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def cli_settings(settings: dict) -> list[str]:
    config = small_config(**settings)
    pairs = {name: getattr(config, name) for name in ("resolution", "train_batch_size", "lora_rank",
             "lr_warmup_steps", "verbose", *settings)}  # fmt: skip
    return [arg for k, v in pairs.items() for arg in ("--set", f"{k}={json.dumps(v)}")]


@pytest.mark.parametrize("base_model", [TINY, TINY_SD15])
def test_resume_after_kill_equals_an_uninterrupted_run(
    base_model, tiny_models, tiny_sd15_model, tiny_env, tmp_path
):
    folder = tiny_sd15_model if base_model == TINY_SD15 else tiny_models["base"]
    dataset = make_dataset(tmp_path / "dataset")
    killed_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "training", str(dataset), str(killed_dir), *cli_settings(RUN)]
    process = subprocess.Popen(command, cwd=ROOT, env=cli_environment(tiny_env, base_model),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 240
    while latest_checkpoint(killed_dir) is None:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 4 minutes"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoint = latest_checkpoint(killed_dir)
    assert not (killed_dir / "weights").exists()  # really killed mid-way
    assert int(checkpoint.name.split("-")[1]) < RUN["max_train_steps"]

    runtime = pick_runtime("cpu")
    resumed = run_training(small_config(**RUN), dataset, folder, killed_dir, runtime, checkpoint)
    straight = run_training(small_config(**RUN), dataset, folder, tmp_path / "straight", runtime)
    for name in (LORA_FILE, EMBEDDINGS_PTI_FILE):
        a, b = (load_file(str(r.weights_dir / name)) for r in (resumed, straight))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = [[json.loads(line)["loss"] for line in r.metrics_file.read_text().splitlines()]
            for r in (resumed, straight)]  # fmt: skip
    assert rows[0] == rows[1] and len(rows[0]) == RUN["max_train_steps"]


def test_a_lora_plus_run_resumes_in_a_process_that_hashes_names_otherwise(tiny_env, tmp_path):
    """LoRA+'s B matrices keep the model's order in their optimizer group, whatever order a
    process's string hashing (PYTHONHASHSEED, random per process) gives a set of their names:
    the optimizer state of a checkpoint fits the new process that resumes from it (a Cog
    `resume_from` call), which continues exactly."""
    dataset = make_dataset(tmp_path / "dataset")
    run = {"max_train_steps": 4, "checkpointing_steps": 2, "ti_lr": 0, "lora_plus_ratio": 4.0}
    resume = ["--resume-from", str(tmp_path / "whole" / CHECKPOINTS_DIR / "checkpoint-000002")]
    for name, hash_seed, extra in (("whole", "1", []), ("resumed", "2", resume)):
        command = [sys.executable, "-m", "training", str(dataset), str(tmp_path / name),
                   *cli_settings(run), *extra]  # fmt: skip
        env = {**cli_environment(tiny_env), "PYTHONHASHSEED": hash_seed}
        finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=600)
        assert finished.returncode == 0, finished.stderr.decode()[-3000:]
    whole, resumed = (
        load_file(str(tmp_path / n / "weights" / LORA_FILE)) for n in ("whole", "resumed")
    )
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_accelerate_launch_with_two_cpu_processes_writes_one_bundle(tiny_env, tmp_path):
    dataset = make_dataset(tmp_path / "dataset")
    work = tmp_path / "work"
    settings = {"max_train_steps": 3, "train_batch_size": 1}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "-m", "training", str(dataset), str(work),
        *cli_settings(settings),
    ]  # fmt: skip
    env = cli_environment(tiny_env)
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU processes (gloo) even where a GPU exists
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=600)
    assert finished.returncode == 0, finished.stderr.decode()[-3000:]
    assert finished.stdout.decode().count("Wrote ") == 1
    with tarfile.open(work / BUNDLE_FILE) as tar:
        record = json.load(tar.extractfile(TRAINING_CONFIG_FILE))
        assert LORA_FILE in tar.getnames()
    assert record["summary"]["processes"] == 2
    assert record["plan"]["global_batch_size"] == 2 and record["plan"]["steps"] == 3
    assert len((work / "metrics.jsonl").read_text().splitlines()) == 3


# The same short run in each container's train() inputs: SDXL's, and FLUX.1's (Replicate's
# Flux trainer names, with two sizes of multi-resolution buckets).
TWO_PROCESS_RUNS = {
    "sdxl": dict(seed=0, resolution=64, train_batch_size=2, max_train_steps=8,
                 lr_warmup_steps=0, lora_rank=4, lora_lr=1e-3),
    "flux": dict(seed=0, resolution="64,128", batch_size=2, steps=4, lora_rank=4,
                 learning_rate=1e-3, optimizer="adamw", base_model=TINY_FLUX),
}  # fmt: skip


def layer_updates(lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a LoRA does to each layer: B @ A (times alpha/rank, equal in the runs compared),
    zero before training. In float64, so the comparison adds no rounding of its own."""
    return {
        key: lora[key.replace(".lora_A.", ".lora_B.")].double().flatten(1)
        @ value.double().flatten(1)
        for key, value in lora.items()
        if ".lora_A." in key
    }


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|a - b| / |a| over all the tensors together (Frobenius norms)."""
    difference = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a) ** 0.5
    return difference / sum(float((a[k] ** 2).sum()) for k in a) ** 0.5


@pytest.mark.parametrize("container", TWO_PROCESS_RUNS)
def test_train_on_two_processes_matches_one_process(container, tiny_env, monkeypatch, capsys):
    """`train()` with two (CPU) processes trains as one process at the same global batch. Not
    bit-exact: the processes average their gradients in an all-reduce, whose floating-point
    summation order differs from the single process's mean over the batch."""
    from serving.containers import CONTAINERS
    from tests.test_train_entry import train_with

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU processes (gloo) even with a GPU
    inputs = TWO_PROCESS_RUNS[container]
    trainer = CONTAINERS[container].trainer
    runs = {}
    for processes in ("1", "2"):
        monkeypatch.setenv("SDXL_TUNER_TRAINING_PROCESSES", processes)
        with tarfile.open(train_with(trainer, **inputs)) as tar:  # read before the next call
            runs[processes] = {
                "names": sorted(tar.getnames()),
                "record": json.load(tar.extractfile(TRAINING_CONFIG_FILE)),
                "lora": load(tar.extractfile(LORA_FILE).read()),
                "losses": [json.loads(line)["loss"] for line in tar.extractfile("metrics.jsonl")],
            }
    one, two = runs["1"], runs["2"]
    log = capsys.readouterr().out
    assert "Training data-parallel in 2 processes, a batch of 1 each." in log
    assert "processes 2" in log  # the processes' own log reaches train()'s
    assert one["names"] == two["names"]
    assert [r["record"]["summary"]["processes"] for r in (one, two)] == [1, 2]
    assert one["record"]["plan"]["global_batch_size"] == two["record"]["plan"]["global_batch_size"]
    assert two["record"]["base_model"] == inputs.get("base_model", TINY)
    assert two["record"]["inputs"] == one["record"]["inputs"]
    # The gradients differ by fp32 rounding (about 1e-7 relative), so each step's loss, a
    # forward pass over the same samples at weights that agree as bounded below, agrees far
    # inside 1e-4 (1e-7 measured).
    assert one["losses"] == pytest.approx(two["losses"], rel=1e-4)
    # Weights are compared by what they do to each layer, as a whole, not entry by entry: Adam
    # divides every gradient entry by its own running size, so an entry whose gradient is near
    # zero, where rounding is a large relative difference, may step differently by up to the
    # learning rate (5.4e-5 apart on another CPU, under an element-wise bound of 1e-5). Every
    # entry moves by about the learning rate per step, so a 1% bound on the whole update leaves
    # room for about (1% / 2)^2 = 2.5e-5 of all entries to take opposite full steps throughout,
    # which rounding-level gradients (a flip needs a gradient within ~1e-7 of cancelling) do not
    # approach: 2e-5 measured here. Training on other samples (another seed) differs by 1.4.
    one_update, two_update = layer_updates(one["lora"]), layer_updates(two["lora"])
    assert one_update.keys() == two_update.keys()
    assert relative_difference(one_update, two_update) < 1e-2
    for key, value in one["lora"].items():
        assert torch.allclose(value, two["lora"][key], rtol=1e-3, atol=1e-5), key


def test_two_processes_train_flux_at_batch_size_1_in_half_the_steps(tiny_env, monkeypatch, capsys):
    """FLUX.1's default batch of 1 on two processes: both train (a batch of 1 each, gradients
    averaged), the global batch is 2 and the steps halve, so the run sees the images the
    one-process run would, in half the steps."""
    from serving.containers import CONTAINERS
    from tests.test_train_entry import train_with

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU processes (gloo) even with a GPU
    monkeypatch.setenv("SDXL_TUNER_TRAINING_PROCESSES", "2")
    inputs = dict(seed=0, resolution="64", batch_size=1, steps=4, lora_rank=4,
                  learning_rate=1e-3, optimizer="adamw", base_model=TINY_FLUX)  # fmt: skip
    with tarfile.open(train_with(CONTAINERS["flux"].trainer, **inputs)) as tar:
        record = json.load(tar.extractfile(TRAINING_CONFIG_FILE))
        losses = [json.loads(line)["loss"] for line in tar.extractfile("metrics.jsonl")]
    log = capsys.readouterr().out
    assert (
        "Training data-parallel in 2 processes, a batch of 1 each. Global batch 2 for batch "
        "size 1: 2 steps instead of 4, about as many images seen."
    ) in log
    plan, summary = record["plan"], record["summary"]
    assert summary["processes"] == 2 and summary["batch_size"] == 1  # each process's share
    assert plan["global_batch_size"] == 2 and plan["steps"] == 2 and len(losses) == 2
    assert plan["steps"] * plan["effective_batch_size"] == inputs["steps"] * inputs["batch_size"]
    assert record["config"]["extra"]["data_parallel"] == {
        "processes": 2, "batch_size": 1, "per_process_batch": 1, "steps": 4,
        "global_batch": 2, "steps_run": 2,
    }  # fmt: skip
