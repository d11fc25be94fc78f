"""How recognisably a toy base (`BASE_MODEL=toy`, or `toy-flux`) draws prompted scenes, against
its family's untrained tiny model (`tiny`, `tiny-flux`: chance level), and how faithfully the
toy VAE reconstructs scenes.

    .venv/bin/python benchmarks/bench_toy_base.py [--base-model toy-flux] [--prompts 16]
        [--seeds 2] [--steps 20]

Generation: held-out grammar prompts x seeds at the size the model's VAE was made for (64x64;
the toy FLUX.1's 256x256) with the pipeline's scheduler and, unless given, the family's
predictor's default guidance; a hit is an image whose border colour (background) / dominant
other colour (object) is the prompted one (toyworld/metrics.py). Reconstruction: the same
reads on VAE round trips of rendered scenes, plus the share of pixels whose nearest palette
colour is unchanged.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import AutoencoderKL, DiffusionPipeline  # noqa: E402

from families import detect_family  # noqa: E402
from serving.containers import CONTAINERS  # noqa: E402
from toyworld import metrics  # noqa: E402
from toyworld.recognition import (  # noqa: E402
    follow_rates,
    generate,
    held_out_prompts,
    vae_round_trip,
)
from toyworld.scenes import render  # noqa: E402
from weights.base_models import resolve_model  # noqa: E402
from weights.settings import TOY, TOY_FLUX  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--base-model", choices=(TOY, TOY_FLUX), default=TOY)
    parser.add_argument("--guidance", type=float, default=None, help="default: the predictor's")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench-cache")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models run fastest on one thread of shared cores

    prompted = held_out_prompts(args.prompts)
    seeds = list(range(args.seeds))
    family = detect_family(resolve_model(args.base_model, "base", args.cache))
    guidance = args.guidance or CONTAINERS[family.container].request().guidance_scale
    rows = []
    for name in (family.tiny_model, args.base_model):
        folder = resolve_model(name, "base", args.cache)
        pipeline = DiffusionPipeline.from_pretrained(folder)
        pipeline.set_progress_bar_config(disable=True)
        started = time.perf_counter()
        images, paired = generate(pipeline, prompted, seeds, args.steps, guidance)
        seconds = (time.perf_counter() - started) / len(images)
        rates = follow_rates(images, paired)
        rows.append((f"generate: {name}", rates, f"{seconds:.2f}"))
        if name == args.base_model:
            rows.append(reconstruction_row(pipeline.vae, prompted))

    print(
        f"\n{args.prompts} held-out prompts x {args.seeds} seeds, {args.steps} steps, "
        f"guidance {guidance}, {pipeline.vae.config.sample_size}px (chance: about 0.125 per "
        "colour)\n"
    )
    print(
        "| model | images | background colour | object colour | both | palette pixels | s/image |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, rates, extra in rows:
        palette = extra if label.startswith("VAE") else "-"
        seconds = "-" if label.startswith("VAE") else extra
        print(
            f"| {label} | {rates.images} | {rates.background:.2f} | {rates.object:.2f} | "
            f"{rates.both:.2f} | {palette} | {seconds} |"
        )


def reconstruction_row(vae: AutoencoderKL, prompted) -> tuple:
    originals = [render(s) for s in prompted]
    arrays = vae_round_trip(vae, originals)
    same = [
        np.mean(
            np.array(metrics.nearest_colour_names(metrics.pixels(o).reshape(-1, 3)))
            == np.array(metrics.nearest_colour_names(r.reshape(-1, 3)))
        )
        for o, r in zip(originals, arrays, strict=True)
    ]
    return ("VAE round trip: toy", follow_rates(list(arrays), prompted), f"{np.mean(same):.3f}")


if __name__ == "__main__":
    main()
