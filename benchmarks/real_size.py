"""Each family's real architecture on this machine's CPU, through the code users run: random
weights in bf16 (no download), two LoRA training steps (training/loop.py, as `train()` runs
them) and a two-step generation (generation/engine.py, as `predict()` runs it) at a small
size, with the peak memory of each stage. It catches real-size shape and dtype errors before
a GPU user does, and checks the memory table in the docs. A benchmark, not a CI test: hours
of CPU and up to ~20 GB of memory.

    .venv/bin/python benchmarks/real_size.py --families sdxl sd15 klein --resolution 256

Each stage runs in its own process, so its peak resident memory is its own. The model folder
is written once under --work and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DTYPE = "bf16"
# Per family: how its real architecture is written as a diffusers folder, its weights in
# bf16 (GB: parameter counts x 2 bytes), the most memory its stages need at once (an
# estimate: a family over this machine's memory is reported, not run), and what the docs'
# memory table says a deployment needs, for comparison.
FAMILIES = {
    "sdxl": dict(
        builder="benchmarks.sdxl_architecture:save_sdxl_folder",
        weights_gb=6.9,  # UNet 2.57 B, text encoders 0.82 B, VAE 0.08 B
        needs_gb=12,
        docs="training 40-80 GB (A100/H100), 24 GB with gradient checkpointing; generation 24 GB",
    ),
    "sd15": dict(
        builder="benchmarks.sd15_architecture:save_sd15_folder",
        weights_gb=2.1,  # UNet 0.86 B, text encoder 0.12 B, VAE 0.08 B
        needs_gb=5,
        docs="(no row: the SDXL rows bound it)",
    ),
    "klein": dict(
        builder="benchmarks.klein_architecture:save_klein_folder",
        weights_gb=16.0,  # transformer 3.88 B, Qwen3-4B 4.02 B, VAE 0.08 B
        needs_gb=18,
        docs="generation about 18 GB; LoRA training 12-14 GB with gradient checkpointing",
    ),
    "flux": dict(
        builder="benchmarks.flux_architecture:save_flux_folder",
        weights_gb=33.4,  # transformer 11.9 B, T5-XXL 4.76 B, CLIP-L 0.12 B, VAE 0.08 B
        # int8 holds the transformer in 11.9 GB, but it loads in bf16 (23.8 GB) first.
        needs_gb=33.4,
        docs="generation 40 GB; LoRA training 48 GB, 24 GB with base_quantization=int8",
        quantization="int8",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=["sdxl", "sd15"], choices=FAMILIES)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--work", type=Path, default=Path("/tmp/real-size"))
    parser.add_argument("--stage", choices=("build", "train", "generate"), help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:  # one stage, in a process of its own
        started = time.perf_counter()
        STAGES[args.stage](args.family, args.work / args.family, args.resolution)
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps({"seconds": time.perf_counter() - started, "peak_gb": peak_gb}))
        return
    available_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    rows = []
    for family in args.families:
        facts = FAMILIES[family]
        if facts["needs_gb"] > 0.8 * available_gb:
            rows.append((family, "all", None, None, facts["weights_gb"], facts["docs"]))
            continue
        for stage in ("build", "train", "generate"):
            measured = run_stage(stage, family, args)
            rows.append((family, stage, *measured, facts["weights_gb"], facts["docs"]))
    print_table(rows, args.resolution, available_gb)


def run_stage(stage: str, family: str, args) -> tuple[float | None, float | None]:
    command = [sys.executable, __file__, "--stage", stage, "--family", family]
    command += ["--work", str(args.work), "--resolution", str(args.resolution)]
    env = dict(os.environ, TORCH_DEVICE="cpu", TORCH_DTYPE=DTYPE, SAFETY_CHECKER_MODEL="tiny")
    env.update(REFINER_MODEL="tiny", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"{family} {stage} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        return None, None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], result["peak_gb"]


def build(family: str, folder: Path, resolution: int) -> None:
    import torch

    if (folder / "model_index.json").is_file():
        return
    module, name = FAMILIES[family]["builder"].split(":")
    save = getattr(__import__(module, fromlist=[name]), name)
    save(folder, torch.device("cpu"), torch.bfloat16)


def train(family: str, folder: Path, resolution: int) -> None:
    from families import detect_family
    from training.config import TrainingConfig
    from training.loop import run_training
    from weights.runtime import pick_runtime

    model_family = detect_family(folder)
    config = TrainingConfig(
        seed=0,
        resolution=resolution,
        train_batch_size=1,
        max_train_steps=2,
        lr_warmup_steps=0,
        lora_rank=16,
        ti_lr=3e-4 if model_family.trains_tokens else 0.0,
        base_quantization=FAMILIES[family].get("quantization", "none"),
        verbose=False,
    )
    dataset = write_dataset(folder.parent / f"{family}-dataset", resolution)
    run_dir = folder.parent / f"{family}-run"
    run_training(config, dataset, folder, run_dir, pick_runtime("cpu", DTYPE), family=model_family)


def generate(family: str, folder: Path, resolution: int) -> None:
    from families import detect_family
    from generation.engine import GenerationEngine
    from serving.containers import CONTAINERS
    from serving.inputs import tiny_profile_defaults
    from weights.settings import ModelSettings

    os.environ["BASE_MODEL"] = str(folder)

    container = CONTAINERS[detect_family(folder).container]
    engine = GenerationEngine(ModelSettings.from_env(container.family))
    small = {**tiny_profile_defaults(container.request), "width": resolution, "height": resolution}
    request = container.request(
        prompt="a photo of a cat", seed=0, disable_safety_checker=True, **small
    )
    engine.generate(request, folder.parent / f"{family}-images")


def write_dataset(folder: Path, resolution: int) -> Path:
    """Two prepared photos (a red square on blue), as preprocessing writes them."""
    import numpy as np
    from PIL import Image

    from formats.dataset_folder import CaptionedImage, write_captions

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(2):
        image = np.full((resolution, resolution, 3), (30, 60, 200), np.uint8)
        square = slice(resolution // 4 + 8 * index, 3 * resolution // 4)
        image[square, square] = (230, 40, 30)
        path = folder / f"{index}.png"
        Image.fromarray(image).save(path)
        rows.append(CaptionedImage(path, None, "a photo of TOK, a red square"))
    write_captions(folder, rows)
    return folder


def print_table(rows, resolution: int, available_gb: float) -> None:
    print(
        f"\nReal architectures, random {DTYPE} weights, CPU, {resolution}² ({available_gb:.0f} GB)"
    )
    print("| family | stage | seconds | peak RSS GB | bf16 weights GB | the docs' table |")
    print("|---|---|---|---|---|---|")
    for family, stage, seconds, peak, weights, docs in rows:
        if seconds is None and stage == "all":
            shown = f"does not fit: {weights:.1f} GB of weights"
            print(f"| {family} | {stage} | – | {shown} | {weights:.1f} | {docs} |")
            continue
        s = "failed" if seconds is None else f"{seconds:.0f}"
        p = "failed" if peak is None else f"{peak:.1f}"
        print(f"| {family} | {stage} | {s} | {p} | {weights:.1f} | {docs} |")


STAGES = {"build": build, "train": train, "generate": generate}

if __name__ == "__main__":
    main()
