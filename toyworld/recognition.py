"""How recognisably a model draws the toy world: the share of generated images whose
background colour and object colour (read from pixels by `toyworld.metrics`) are the ones the
prompt asked for. With 8 colours, a model that ignores the prompt scores about 1/8."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from toyworld import metrics
from toyworld.scenes import SIZE, Scene, scenes

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


@torch.no_grad()
def generate(pipeline, prompted: list[Scene], seeds: list[int], steps: int, guidance: float):
    """One image per (scene, seed), in that order, at the toy world's size."""
    images, paired = [], []
    for scene in prompted:
        for seed in seeds:
            image = pipeline(
                scene.caption,
                width=SIZE,
                height=SIZE,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=torch.Generator().manual_seed(seed),
            ).images[0]
            images.append(image)
            paired.append(scene)
    return images, paired
