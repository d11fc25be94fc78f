"""Does a fine-tune learn to denoise its own subject, and at which noise levels?

    .venv/bin/python benchmarks/quality/denoising.py                       # the defaults
    .venv/bin/python benchmarks/quality/denoising.py --set lora_lr=1e-3 --steps 300
    .venv/bin/python benchmarks/quality/denoising.py --targets to_q to_k to_v to_out.0 conv1 conv2

Trains the emblem through `train()` as `run.py` does (resolution 64, seed 0), then noises the
8 training photos' latents to each timestep t, lets the trained model (LoRA scale 1) estimate
the clean latent in one step from its own caption, decodes it and counts the photos whose
estimate shows the emblem (`metrics.subject_present`). Sampling from noise needs the high-t
columns: the layout is decided there. `eps mse` is the noise prediction's error (lower is
better; the base model's row is step 0). `--targets` replaces the LoRA's target modules, an
experiment the trainer does not offer as an input.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from training.config import parse_settings  # noqa: E402 (after the path set-up)

TIMESTEPS = (100, 300, 500, 700, 900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", default="toy")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--set", action="append", default=[], metavar="INPUT=VALUE")
    parser.add_argument("--targets", nargs="+", help="LoRA target modules (experiment)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    os.environ.setdefault("SDXL_TUNER_CACHE", str(Path.home() / ".cache" / "sdxl-tuner"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import families
    from toyworld.evaluate import ToyEvaluator, train_on_zip
    from toyworld.subject import write_subject_zip

    torch.set_num_threads(args.threads)
    if args.targets:
        # Every lookup returns this one frozen object, so the experiment edits it in place.
        object.__setattr__(families.SDXL, "lora_target_modules", tuple(args.targets))
    evaluator = ToyEvaluator(args.base_model, Path(os.environ["SDXL_TUNER_CACHE"]))
    rows = [("base model", denoise(evaluator, None))]
    with tempfile.TemporaryDirectory(prefix="denoising-") as work:
        inputs = dict(resolution=64, seed=0, max_train_steps=args.steps, checkpointing_steps=0,
                      verbose=False)  # fmt: skip
        inputs.update(parse_settings(args.set))
        trained = train_on_zip(
            write_subject_zip(Path(work) / "emblem.zip"), args.base_model, Path(work), **inputs
        )
        rows.append((f"{args.steps} steps {' '.join(args.set)}", denoise(evaluator, trained.path)))
    names = [f"t={t} emblem | t={t} eps mse" for t in TIMESTEPS]
    print("| model | " + " | ".join(names) + " |")
    print("|---|" + "---|---|" * len(TIMESTEPS))
    for name, scores in rows:
        cells = [f"{share:.2f} | {mse:.3f}" for share, mse in scores]
        print(f"| {name} | " + " | ".join(cells) + " |")


def denoise(evaluator, weights: Path | None) -> list[tuple[float, float]]:
    """(share of photos whose one-step estimate shows the emblem, noise MSE) per timestep."""
    import numpy as np
    import torch
    from diffusers import DDPMScheduler

    from families import Conditioning
    from formats.tokens import apply_token_map
    from generation.switcher import Selection
    from toyworld import metrics
    from toyworld.recognition import decode_pixels, pixel_batch
    from toyworld.subject import subject_images

    prepared = evaluator.engine.weights_cache.get(str(weights)) if weights else None
    evaluator.engine.switcher.activate(Selection(prepared, 1.0))
    pipeline, device = evaluator.pipeline, evaluator.pipeline.device
    photos = subject_images(8, seed=0)  # the zip's photos and captions
    token_map = prepared.token_map if prepared else {}
    captions = [apply_token_map(caption, token_map) for _, caption in photos]
    vae, scale = pipeline.vae, pipeline.vae.config.scaling_factor
    generator = torch.Generator().manual_seed(0)  # CPU noise: the same on every device
    scores = []
    with torch.inference_mode():
        pixels = pixel_batch(image for image, _ in photos).to(device, vae.dtype)
        clean = vae.encode(pixels).latent_dist.mean.float() * scale
        embeds, _, pooled, _ = pipeline.encode_prompt(captions, do_classifier_free_guidance=False)
        sizes = [tuple(pixels.shape[-2:])] * len(photos)
        conditioning = Conditioning(embeds, pooled)
        schedule = DDPMScheduler.from_config(pipeline.scheduler.config)  # the trainer's noising
        for t in TIMESTEPS:
            noise = torch.randn(clean.shape, generator=generator).to(device)
            timesteps = torch.full((len(photos),), t, device=device)
            noisy = schedule.add_noise(clean, noise, timesteps)
            predicted = evaluator.engine.family.denoise(
                pipeline.unet, noisy.to(pipeline.unet.dtype), timesteps, conditioning, sizes
            ).float()  # the toy base predicts the noise (epsilon)
            alpha = schedule.alphas_cumprod[t].to(device)
            estimate = (noisy - (1 - alpha).sqrt() * predicted) / alpha.sqrt()
            images = decode_pixels(vae, estimate / scale)
            share = float(np.mean([metrics.subject_present(image) for image in images]))
            scores.append((share, float(((predicted - noise) ** 2).mean())))
    return scores


if __name__ == "__main__":
    main()
