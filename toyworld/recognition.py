"""How recognisably a model draws the toy world: the share of generated images whose
background colour and object colour (read from pixels by `toyworld.metrics`) are the ones the
prompt asked for. With 8 colours, a model that ignores the prompt scores about 1/8."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from toyworld import metrics
from toyworld.scenes import Scene, scenes

HELD_OUT_SEED = 424242  # prompts drawn apart from the pretraining scenes (seed 0)


@dataclass(frozen=True)
class FollowRates:
    background: float  # share with the prompted background colour
    object: float  # share with the prompted object colour
    both: float
    images: int


def held_out_prompts(count: int) -> list[Scene]:
    return scenes(count, HELD_OUT_SEED)


def follow_rates(images, prompted: list[Scene]) -> FollowRates:
    """Rates over images paired with the scenes whose captions prompted them."""
    background = [
        metrics.background_colour(i) == s.background_colour
        for i, s in zip(images, prompted, strict=True)
    ]
    objects = [metrics.object_colour(i) == s.colour for i, s in zip(images, prompted, strict=True)]
    both = [b and o for b, o in zip(background, objects, strict=True)]
    return FollowRates(
        float(np.mean(background)), float(np.mean(objects)), float(np.mean(both)), len(images)
    )


def pixel_batch(images) -> torch.Tensor:
    """RGB images (PIL or H x W x 3 arrays, 0..255) as a [N, 3, H, W] float batch in -1..1."""
    arrays = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


@torch.no_grad()
def vae_round_trip(vae, images) -> np.ndarray:
    """`images` encoded (posterior mean) and decoded by `vae`: N x H x W x 3 floats, 0..255.
    What a model on this VAE can draw at best: its UNet trains on those latents."""
    pixels = pixel_batch(images).to(vae.device, vae.dtype)
    return decode_pixels(vae, vae.encode(pixels).latent_dist.mean)


@torch.no_grad()
def decode_pixels(vae, latents: torch.Tensor) -> np.ndarray:
    """Unscaled latents decoded by `vae`: N x H x W x 3 floats, 0..255."""
    decoded = vae.decode(latents.to(vae.dtype)).sample.float().clamp(-1, 1)
    return ((decoded + 1) * 127.5).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate(pipeline, prompted: list[Scene], seeds: list[int], steps: int, guidance: float):
    """One image per (scene, seed), in that order, at the size the model's VAE was made for
    (the toy world's, 64, for the toy SDXL; the toy FLUX.1 draws it upscaled)."""
    size = pipeline.vae.config.sample_size
    images, paired = [], []
    for scene in prompted:
        for seed in seeds:
            image = pipeline(
                scene.caption,
                width=size,
                height=size,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=torch.Generator().manual_seed(seed),
            ).images[0]
            images.append(image)
            paired.append(scene)
    return images, paired
