"""Pretrain the toy base (`BASE_MODEL=toy`): the tiny SDXL's VAE and UNet trained on toy scenes.

    python -m toyworld.pretrain                 # `make toy-base`: both stages, from seed 0
    python -m toyworld.pretrain --stage unet    # the UNet again, on the shipped VAE
    python -m toyworld.pretrain --stage unet --resume   # continue a killed UNet run
    python -m toyworld.pretrain --family flux   # the toy FLUX.1 (toyworld/pretrain_flux.py)

1. The VAE (the tiny SDXL VAE's classes and 8x scale, narrower at full resolution) learns to
   reconstruct freshly drawn images (grammar scenes, and shapes and sectors in random
   colours) with an L1 loss and a small KL term, in three phases
   (`VAE_PHASES`) of its own small loop: it is no part of the user-facing trainer. Its latent
   scaling factor is then set so that scaled latents have unit variance, as SD's is.
2. Rendered scenes and their grammar captions are written as a prepared dataset folder.
3. The UNet trains from random initialisation through the project's own full fine-tuning path
   (`run_training`, is_lora=False, no new tokens, frozen tiny CLIP encoders), with the toy VAE
   in place, offset noise and Min-SNR weighting. Captions are dropped 10% of the time so
   classifier-free guidance has an unconditional prediction to push against.
4. Both are stored in fp16 under weights/embedded/toy_weights/, which `weights.embedded.toy`
   assembles into a full pipeline folder.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file
from tqdm.auto import tqdm

from families.sdxl.tiny import SDXL_VAE_SCALING, build_tiny_sdxl
from families.tiny_parts import build_vae
from formats.bundle import UNET_FILE
from formats.dataset_folder import CAPTION_COLUMNS, CAPTIONS_FILE
from toyworld.recognition import pixel_batch
from toyworld.scenes import (
    BACKGROUNDS,
    SHAPES,
    SIZE,
    downsample,
    downsample_mask,
    draw_background,
    paint_sector,
    paint_shape,
    render,
    render_with_mask,
    scenes,
    shape_mask,
)
from training.config import TrainingConfig
from training.loop import latest_checkpoint, run_training
from weights.embedded.toy import TOY_WEIGHTS_DIR, save_toy_part, toy_pipeline
from weights.runtime import pick_runtime

WORK_DIR = Path("outputs/toy-base")
VAE_SEED_OFFSET = 1_000_000  # VAE scenes come from other seeds than the UNet's dataset
# The tiny SDXL VAE's four levels, narrower at full resolution, where most of its compute is.
TOY_VAE_CHANNELS = (16, 32, 64, 64)
INITIAL_LOGVAR = -8.0
# SDXL has no attention at full latent resolution; at 1024px a subject spans dozens of latent
# cells at its attention levels. At 64px the emblem's quarters are one or two cells of the 8x8
# latent, so the toy UNet attends there too, or a LoRA on the attention projections (the
# default targets) cannot draw them: only full-resolution convolutions could.
TOY_UNET_BLOCKS = dict(
    down_block_types=("CrossAttnDownBlock2D",) * 3,
    up_block_types=("CrossAttnUpBlock2D",) * 3,
)


@dataclass(frozen=True)
class VAEPhase:
    steps: int
    lr: float
    batch_size: int
    crop_fraction: float  # share of the steps on random crops (a quarter of the compute each)
    object_weight: float  # extra L1 weight on the object's pixels
    any_colour_share: float  # share of `any_colour_image`s instead of grammar scenes


# 1. Backgrounds and rough shapes, mostly on 32x32 crops; 2. and 3. whole images with the
# objects' pixels weighted, so small shapes keep their colour, then at a lower learning rate.
# Half of the images have random colours and several shapes, some cut into coloured sectors: a
# real VAE draws any colour and detail, and a user's subject rarely has the grammar's colours
# or a single one. (On the palette alone the VAE decoded the emblem as a blue blob.)
VAE_PHASES = (
    VAEPhase(1500, 5e-4, 16, crop_fraction=0.85, object_weight=0.0, any_colour_share=0.5),
    VAEPhase(1500, 3e-4, 8, crop_fraction=0.0, object_weight=4.0, any_colour_share=0.5),
    VAEPhase(3000, 2e-4, 8, crop_fraction=0.0, object_weight=4.0, any_colour_share=0.5),
)


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    kl_weight: float = 1e-6
    vae_crop: int = 32
    vae_save_every: int = 100  # an interrupted run still leaves a usable VAE
    unet_images: int = 4000
    unet_steps: int = 6000
    unet_batch_size: int = 16
    unet_lr: float = 5e-4
    caption_dropout: float = 0.1
    # Offset noise: SDXL's schedule leaves ~7% of the image at the last timestep, so without it
    # the UNet reads the overall colour from that residue instead of the prompt, and samples
    # from pure noise come out pale and alike. In an 8x8 latent the overall colour is the scene.
    noise_offset: float = 0.3
    min_snr_gamma: float = 5.0  # Min-SNR weighting: faster convergence
    checkpointing_steps: int = 500
    # The toy FLUX.1's transformer (`--family flux`, toyworld/pretrain_flux.py), on the same
    # scenes (unet_images, caption_dropout).
    flux_steps: int = 3600
    flux_batch_size: int = 8
    flux_lr: float = 1e-3
    flux_save_every: int = 100  # weights and a checkpoint for --resume


# --- 1. the VAE --------------------------------------------------------------------------------


def scene_batch(
    count: int, seed: int, any_colour_share: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` freshly drawn images as [count, 3, 64, 64] pixels in -1..1, and their objects'
    masks [count, 1, 64, 64] in 0..1: grammar scenes, and a share `any_colour_share` of
    `any_colour_image`s."""
    rng = random.Random(seed)
    drawn = [
        any_colour_image(rng) if rng.random() < any_colour_share else render_with_mask(scene)
        for scene in scenes(count, seed)
    ]
    masks = np.stack([np.asarray(mask, dtype=np.float32) for _, mask in drawn]) / 255.0
    return pixel_batch(image for image, _ in drawn), torch.from_numpy(masks)[:, None]


def any_colour_image(rng: random.Random) -> tuple[Image.Image, Image.Image]:
    """A background and one to four shapes, overlapping, all in random RGB colours, and the
    shapes' mask: colours, and colour edges inside objects, beyond what the grammar draws. Half
    of the shapes are discs cut into sectors of their own colours."""
    image = draw_background(rng.choice(BACKGROUNDS), random_rgb(rng))
    mask = Image.new("L", image.size, 0)
    for _ in range(rng.randint(1, 4)):
        radius = rng.uniform(4, 24)
        centre = (rng.uniform(0, SIZE), rng.uniform(0, SIZE))
        if rng.random() < 0.5:
            shape = paint_shape(image, rng.choice(SHAPES), centre, radius, random_rgb(rng))
        else:
            shape = paint_sectors(image, centre, radius, rng)
        mask.paste(255, mask=shape)
    return downsample(image), downsample_mask(mask)


def paint_sectors(
    image: Image.Image, centre: tuple[float, float], radius: float, rng: random.Random
) -> Image.Image:
    """A disc of 2 to 6 sectors in random colours, at a random angle; returns its mask."""
    count, start = rng.randint(2, 6), rng.uniform(0, 360)
    colours = [random_rgb(rng) for _ in range(rng.randint(2, count))]
    for sector in range(count):
        angles = (start + sector * 360 / count, start + (sector + 1) * 360 / count)
        paint_sector(image, centre, radius, angles, colours[sector % len(colours)])
    return shape_mask("circle", centre, radius)


def random_rgb(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randrange(256) for _ in range(3))


def train_vae(config: PretrainConfig, weights_dir: Path) -> AutoencoderKL:
    vae = build_vae(SDXL_VAE_SCALING, TOY_VAE_CHANNELS)
    # Start from a nearly deterministic posterior (std ~0.02): from a std of 1 the encoder
    # would spend most of a short run learning to shrink the noise on its latents.
    with torch.no_grad():
        vae.quant_conv.bias[vae.config.latent_channels :] = INITIAL_LOGVAR
    for index, phase in enumerate(VAE_PHASES):
        train_vae_phase(vae, phase, config, config.seed + index, weights_dir)
    return vae


def train_vae_phase(
    vae: AutoencoderKL, phase: VAEPhase, config: PretrainConfig, seed: int, weights_dir: Path
) -> None:
    """One phase: AdamW with a short warm-up and a cosine decay, L1 + a small KL term."""
    torch.manual_seed(seed)
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=phase.lr, weight_decay=0.0)
    warmup = 50
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / phase.steps))
        ),
    )
    bar = tqdm(range(phase.steps), desc=f"VAE phase {seed - config.seed + 1}", unit="step")
    for step in bar:
        pixels, masks = scene_batch(
            phase.batch_size, VAE_SEED_OFFSET + seed * 100_000 + step, phase.any_colour_share
        )
        if step < phase.steps * phase.crop_fraction:
            box = crop_box(pixels.shape[-1], config.vae_crop, random.Random(step))
            pixels, masks = pixels[box], masks[box]
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        weight = 1.0 + phase.object_weight * masks
        l1 = (weight * (reconstruction - pixels).abs()).mean() / weight.mean()
        loss = l1 + config.kl_weight * posterior.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(l1=f"{l1.item():.4f}", refresh=False)
        if (step + 1) % config.vae_save_every == 0 or step + 1 == phase.steps:
            save_vae(vae, config.seed, weights_dir)


def save_vae(vae: AutoencoderKL, seed: int, weights_dir: Path) -> None:
    vae.eval()
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, seed))
    save_toy_part(vae, "vae", weights_dir)
    vae.train()


def crop_box(full: int, size: int, rng: random.Random) -> tuple[slice, ...]:
    """A random square crop on the latent grid (multiples of 8 pixels)."""
    top, left = (rng.randrange(0, full - size + 1, 8) for _ in range(2))
    return (..., slice(top, top + size), slice(left, left + size))


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, seed: int) -> float:
    """1 / std of the latents of held-out scenes (SD's recipe): noise and latents then have
    comparable scales, as the noise schedule assumes."""
    latents = vae.encode(scene_batch(64, seed + 7)[0]).latent_dist.mean
    return float(1.0 / latents.std())


# --- 2. the dataset ----------------------------------------------------------------------------


def write_scene_dataset(folder: Path, count: int, seed: int) -> Path:
    """`count` scenes as the trainer's prepared dataset: PNGs and captions.csv, no masks."""
    if (folder / CAPTIONS_FILE).is_file():
        return folder
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with (staging / CAPTIONS_FILE).open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(CAPTION_COLUMNS)
        for index, scene in enumerate(tqdm(scenes(count, seed), desc="scenes", unit="image")):
            name = f"{index:05d}.png"
            render(scene).save(staging / name)
            writer.writerow([name, "", scene.caption])
    staging.rename(folder)
    return folder


# --- 3. the UNet -------------------------------------------------------------------------------


def unet_training_config(config: PretrainConfig) -> TrainingConfig:
    return TrainingConfig(
        seed=config.seed,
        resolution=64,
        train_batch_size=config.unet_batch_size,
        max_train_steps=config.unet_steps,
        is_lora=False,
        unet_learning_rate=config.unet_lr,
        ti_lr=0.0,  # no new tokens: the grammar's words are plain text
        caption_prefix="",
        use_masks=False,
        caption_dropout=config.caption_dropout,
        noise_offset=config.noise_offset,
        min_snr_gamma=config.min_snr_gamma,
        lr_scheduler="cosine",
        lr_warmup_steps=100,
        weight_decay=0.0,
        checkpointing_steps=config.checkpointing_steps,
    )


def train_unet(
    config: PretrainConfig, work_dir: Path, weights_dir: Path, resume: bool
) -> UNet2DConditionModel:
    """The UNet, trained from random initialisation with the toy VAE in place."""
    # The tiny SDXL with the toy VAE and a randomly initialised UNet of the tiny one's sizes.
    start = work_dir / "start-model"
    tiny = build_tiny_sdxl("base")
    vae = AutoencoderKL.from_pretrained(weights_dir / "vae", dtype=torch.float32)
    torch.manual_seed(config.seed)
    unet = UNet2DConditionModel.from_config({**tiny.unet.config, **TOY_UNET_BLOCKS})
    toy_pipeline(tiny, vae, unet).save_pretrained(start, safe_serialization=True)
    dataset = write_scene_dataset(work_dir / "dataset", config.unet_images, config.seed)
    runs = work_dir / "unet-run"
    resume_from = latest_checkpoint(runs) if resume else None
    if not resume:
        shutil.rmtree(runs, ignore_errors=True)
    runtime = pick_runtime(None, None)
    run_training(unet_training_config(config), dataset, start, runs, runtime, resume_from)
    unet = UNet2DConditionModel.from_pretrained(start, subfolder="unet")
    unet.load_state_dict(load_file(runs / "weights" / UNET_FILE))
    return unet


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=("sdxl", "flux"), default="sdxl")
    parser.add_argument("--stage", choices=("all", "vae", "unet"), default="all")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: per family")
    parser.add_argument("--resume", action="store_true", help="continue the UNet's run")
    parser.add_argument("--weights-dir", type=Path, default=None, help="default: the shipped")
    for name, default in vars(PretrainConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    config = PretrainConfig(**{k: getattr(args, k) for k in vars(PretrainConfig())})
    started = time.perf_counter()
    if args.family == "flux":  # imported here: pretrain_flux builds on this module
        from toyworld.pretrain_flux import pretrain_toy_flux

        weights_dir = pretrain_toy_flux(config, args.work_dir, args.weights_dir, args.resume)
    else:
        weights_dir = pretrain_toy(config, args.stage, args.work_dir, args.weights_dir, args.resume)
    print(f"Wrote {weights_dir} in {time.perf_counter() - started:.0f}s")


def pretrain_toy(
    config: PretrainConfig, stage: str, work_dir: Path | None, weights_dir: Path | None, resume
) -> Path:
    """The toy SDXL's VAE and UNet (`stage`: both, or one of them)."""
    started, weights_dir = time.perf_counter(), weights_dir or TOY_WEIGHTS_DIR
    if stage in ("all", "vae"):
        train_vae(config, weights_dir)
        print(f"VAE done after {time.perf_counter() - started:.0f}s", flush=True)
    if stage in ("all", "unet"):
        unet = train_unet(config, work_dir or WORK_DIR, weights_dir, resume)
        save_toy_part(unet, "unet", weights_dir)
    return weights_dir


if __name__ == "__main__":
    main()
