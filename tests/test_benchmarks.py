"""The GPU benchmark's smoke mode (tiny models, CPU) runs every measurement, so the real-scale
run on a GPU machine does not rot between the times one is at hand; the quality benchmark
measures a style over training seeds, and the variance benchmark splits a seed."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(model_cache, script: str, *arguments: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", SDXL_TUNER_CACHE=str(model_cache)
    )
    done = subprocess.run(
        [sys.executable, script, *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def run_smoke(model_cache, *arguments: str) -> subprocess.CompletedProcess:
    return run_benchmark(model_cache, "benchmarks/gpu/run.py", "--smoke", *arguments)


def test_the_gpu_benchmark_runs_every_row_at_smoke_scale(model_cache):
    done = run_smoke(model_cache)
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    measured = [line.split(" | ")[0].removeprefix("| ") for line in table[1:]]
    assert measured.count("train: our loop") == 2
    assert "train: LoRA UNet forward + backward (floor)" in measured
    assert "train: diffusers' advanced example's step" in measured
    assert {"generate: predict()'s engine", "generate: plain diffusers pipeline"} <= set(measured)
    assert any(m.startswith("switch: ours: warm") for m in measured)
    assert any(m.startswith("switch: diffusers: hotswap") for m in measured)
    for option in ("tf32", "channels_last", "compile"):
        assert f"train: our loop + {option}" in measured
    assert "generate: predict()'s engine + channels_last" in measured
    assert "FLOPs: UNet pass (batch 2)" in done.stdout
    assert "NOT identical" not in done.stdout


def test_the_gpu_benchmark_runs_every_flux_row_at_smoke_scale(model_cache):
    done = run_smoke(model_cache, "--family", "flux")
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    measured = {line.split(" | ")[0].removeprefix("| ") for line in table[1:]}
    assert measured == {
        "train: our loop",
        "train: our loop, int8 base + checkpointing",
        "train: LoRA transformer fwd + bwd (floor)",
        "generate: predict_flux's engine",
        "generate: plain FluxPipeline",
    }
    assert "FLOPs: transformer pass" in done.stdout


def test_the_quality_benchmark_measures_a_style_over_training_seeds(model_cache, tmp_path):
    done = run_benchmark(
        model_cache, "benchmarks/quality/run.py", "--concept", "style", "--quick",
        "--methods", "pivotal tuning", "--steps", "10", "--training-seeds", "0", "1",
        "--out", str(tmp_path),
    )  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["concept"] == "style" and results["ceiling"] >= 0.75  # dusk survives the VAE
    base, *trained = results["rows"]
    assert base["style"] == 0.0 and base["leak"] == 0.0  # the style is new to the base
    assert [row["training_seed"] for row in trained] == [0, 1]
    (summary,) = results["summary"]
    assert summary["seeds"] == [0, 1] and set(summary["worst"]) == set(base) - {
        "method",
        "steps",
        "seconds",
    }
    assert "| pivotal tuning | 10 | 2 |" in done.stdout


def test_the_variance_benchmark_trains_each_split_of_the_seed(model_cache):
    done = run_benchmark(
        model_cache, "benchmarks/quality/variance.py", "--steps", "1", "--seeds", "0", "1",
        "--threads", "1",
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    runs = [line.split(" | ")[:3] for line in lines if line[2].isdigit()]
    assert runs == [["| 0", "0", "0"], ["| 1", "1", "0"], ["| 0", "0", "1"]]
    assert any(line.startswith("| the start (tokens, LoRA A) | 2 |") for line in lines)
    assert any(line.startswith("| the draws (batches, noise, timesteps) | 2 |") for line in lines)
