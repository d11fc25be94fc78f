"""FLUX.2 [klein] LoRA training: this project's training step against diffusers' example
script `train_dreambooth_lora_flux2_klein.py`, unedited, at equal settings on the same tiny
model (`tiny-flux2-klein`, the real classes), measured side by side in one run.

    .venv/bin/python benchmarks/bench_klein_train.py \
        --diffusers-script /tmp/train_dreambooth_lora_flux2_klein.py \
        --torchvision /tmp/bench-deps    # where `pip install --target` put torchvision

The script is not part of the diffusers package: take it from diffusers' repository
(benchmarks/README.md says which commit and how). It imports torchvision, which this
project does not need; give the folder of a torchvision build for the pinned torch.

Equal settings: resolution, batch, LoRA rank and alpha, the same target modules (the
script's defaults), steps, AdamW at a constant learning rate, gradient clipping at 1,
logit-normal timesteps, fp32 on the CPU, one thread, latents cached (`--cache_latents`)
and the one prompt encoded once. Each trainer runs in its own process; a step is timed from
one optimizer step to the next (both step through accelerate's `AcceleratedOptimizer`), the
first step left out. Peak memory is the process's max RSS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.diffusers_script import (  # noqa: E402 (after the path set-up)
    peak_rss_mb,
    run_script,
    step_intervals,
    time_optimizer_steps,
    worker_environment,
)

CAPTION = "a photo of TOK, a red square"
# The script's default LoRA targets as one expression over the transformer's module names.
SCRIPT_TARGETS = (
    r"(transformer_blocks\.\d+\.attn\.(to_[qkv]|to_out\.0)"
    r"|single_transformer_blocks\.\d+\.attn\.(to_qkv_mlp_proj|to_out))$"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--diffusers-script", type=Path, required=True)
    parser.add_argument("--torchvision", type=Path, help="folder holding a torchvision build")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--worker", choices=("ours", "diffusers", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--setup", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-klein-") as tmp:
        setup = prepare(Path(tmp), args)
        rows = {"diffusers": [], "ours": [], "floor": []}
        for _ in range(args.rounds):  # alternating: a busy machine slows both alike
            for name, runs in rows.items():
                runs.append(run_case(name, setup, args))
    print(table(rows, args))


# --- the parent: inputs, the two runs, the table ---------------------------------------------


def prepare(folder: Path, args) -> Path:
    """The tiny model, the photos (a folder for the script, a prepared dataset for ours)."""
    sys.path.insert(0, str(ROOT))
    import weights.quiet  # noqa: F401
    from tests.train_helpers import make_dataset  # red squares on blue, one caption
    from weights.embedded.tiny import ensure_tiny_model

    base = ensure_tiny_model("base", folder / "models", family="flux2_klein")
    dataset = make_dataset(folder / "dataset", args.images, masks=False, size=args.resolution)
    instances = folder / "instances"
    instances.mkdir()
    for photo in sorted(dataset.glob("*.src.png")):
        (instances / photo.name).symlink_to(photo)
    setup = folder / "setup.json"
    setup.write_text(
        json.dumps({"base": str(base), "dataset": str(dataset), "instances": str(instances)})
    )
    return setup


def run_case(name: str, setup: Path, args) -> dict:
    packages = [args.torchvision] if name == "diffusers" and args.torchvision else []
    env = worker_environment(packages)
    command = [sys.executable, __file__, "--worker", name, "--setup", str(setup)]
    command += ["--diffusers-script", str(args.diffusers_script)]
    for option in ("steps", "resolution", "batch", "rank", "images"):
        command += [f"--{option}", str(getattr(args, option))]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    result = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not result:
        raise SystemExit(f"{name} failed:\n{done.stderr[-4000:]}")
    return json.loads(result[-1])


def table(rows: dict, args) -> str:
    """Each trainer's step times over all its runs; peak memory, the largest run's."""
    lines = [
        f"{args.steps} steps x {args.rounds} runs each, {args.resolution}², batch {args.batch}, "
        f"LoRA rank {args.rank}, fp32, 1 thread, tiny-flux2-klein",
        "",
        "| trainer | steps/s | median step s | peak RSS MB | steps timed |",
        "|---|---|---|---|---|",
    ]
    medians = {}
    for name, runs in rows.items():
        intervals = [interval for run in runs for interval in run["intervals"]]
        medians[name] = statistics.median(intervals)
        rate = len(intervals) / sum(intervals)
        peak = max(run["peak_rss_mb"] for run in runs)
        lines.append(
            f"| {name} | {rate:.2f} | {medians[name]:.4f} | {peak:.0f} | {len(intervals)} |"
        )
    ratio = medians["diffusers"] / medians["ours"]
    lines += ["", f"ours is {ratio:.2f}x as fast as diffusers' script (median step)"]
    floor = medians["floor"]
    lines += [
        f"the floor is {medians['diffusers'] / floor:.2f}x as fast as diffusers' script: "
        f"ours spends {medians['ours'] - floor:.4f} s a step around the model, diffusers' "
        f"script {medians['diffusers'] - floor:.4f} s"
    ]
    return "\n".join(lines)


# --- a worker: one trainer, its optimizer steps timed -----------------------------------------


def run_worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    ends = time_optimizer_steps()
    setup = json.loads(args.setup.read_text())
    with tempfile.TemporaryDirectory(prefix="bench-klein-run-") as work:
        runs = {"ours": run_ours, "diffusers": run_diffusers, "floor": run_floor}
        ends += runs[args.worker](setup, Path(work), args) or []
    print(json.dumps({"intervals": step_intervals(ends), "peak_rss_mb": peak_rss_mb()}))


def run_ours(setup: dict, work: Path, args) -> None:
    sys.path.insert(0, str(ROOT))
    import weights.quiet  # noqa: F401
    from families.flux2_klein import KLEIN
    from training.config import TrainingConfig
    from training.loop import run_training
    from weights.runtime import pick_runtime

    config = TrainingConfig(
        seed=0,
        resolution=args.resolution,
        train_batch_size=args.batch,
        max_train_steps=args.steps,
        lora_rank=args.rank,
        lora_alpha=args.rank,
        lora_lr=1e-4,
        ti_lr=0.0,
        optimizer="adamw",
        lr_scheduler="constant",
        lr_warmup_steps=0,
        max_grad_norm=1.0,
        lora_layers_regex=SCRIPT_TARGETS,
        use_masks=False,
        verbose=False,
    )
    runtime = pick_runtime("cpu")
    run_training(config, Path(setup["dataset"]), Path(setup["base"]), work, runtime, family=KLEIN)


def run_floor(setup: dict, work: Path, args) -> list[float]:
    """The least a step can cost: the LoRA transformer's forward and backward on one fixed
    batch, gradient clipping and AdamW, with nothing around them (no data, no draws, no
    bookkeeping). Returns the step end times (no AcceleratedOptimizer here)."""
    sys.path.insert(0, str(ROOT))
    import torch
    from diffusers import Flux2KleinPipeline

    from families.flux2_klein import KLEIN
    from training.components import add_lora, lora_targets

    pipeline = Flux2KleinPipeline.from_pretrained(setup["base"])
    transformer = pipeline.transformer.requires_grad_(False)
    targets = lora_targets(transformer, "transformer", SCRIPT_TARGETS)
    add_lora(transformer, args.rank, args.rank, targets, "lora")
    trained = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4, foreach=True)
    with torch.no_grad():
        conditioning = KLEIN.encode_prompt(
            [pipeline.text_encoder], [pipeline.tokenizer], [CAPTION] * args.batch, "cpu"
        )
    side = args.resolution // 16
    channels = transformer.config.in_channels
    latents = torch.randn(args.batch, channels, side, side)
    noise, sigmas = torch.randn_like(latents), torch.full((args.batch,), 0.5)
    noisy, target = 0.5 * latents + 0.5 * noise, noise - latents
    ends = []
    for _ in range(args.steps):
        prediction = KLEIN.denoise(transformer, noisy, sigmas, conditioning, [])
        torch.nn.functional.mse_loss(prediction, target).backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    return ends


def run_diffusers(setup: dict, work: Path, args) -> None:
    """The script as `accelerate launch` would run it, in this process, unedited."""
    sys.path.insert(0, str(ROOT))
    from families.flux2_klein import PROMPT_LAYERS

    arguments = [
        f"--pretrained_model_name_or_path={setup['base']}",
        f"--instance_data_dir={setup['instances']}",
        f"--instance_prompt={CAPTION}",
        f"--output_dir={work}",
        f"--resolution={args.resolution}",
        f"--train_batch_size={args.batch}",
        f"--rank={args.rank}",
        f"--lora_alpha={args.rank}",
        f"--max_train_steps={args.steps}",
        "--learning_rate=1e-4",
        "--optimizer=adamw",
        "--lr_scheduler=constant",
        "--lr_warmup_steps=0",
        "--max_grad_norm=1.0",
        "--weighting_scheme=logit_normal",
        # The pipelines' prompt layers (the script's default, 10 20 30, is not what they use).
        "--text_encoder_out_layers",
        *map(str, PROMPT_LAYERS),
        "--cache_latents",
        "--seed=0",
        "--checkpointing_steps=1000000",
        "--dataloader_num_workers=0",
    ]
    run_script(args.diffusers_script, arguments)


if __name__ == "__main__":
    main()
