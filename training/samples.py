"""Sample images rendered with the weights as they are being trained."""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch
from diffusers import EulerDiscreteScheduler

from formats.tokens import apply_token_map
from training.components import TrainingComponents
from training.config import TrainingConfig


def sample_file(folder: Path, step: int, index: int) -> Path:
    return folder / f"step-{step:06d}-{index}.png"


@torch.no_grad()
def render_samples(
    models: TrainingComponents, config: TrainingConfig, token_map, folder: Path, step, accelerator
):
    """One image per sample prompt at the training resolution, same seed every time, so the
    images of successive steps show how the training moves."""
    family = models.family
    pipeline = getattr(diffusers, family.txt2img_pipeline)(
        vae=models.vae,
        unet=models.unet,
        scheduler=EulerDiscreteScheduler.from_pretrained(models.folder, subfolder="scheduler"),
        **models.named_text_encoders(),
        **dict(zip(family.tokenizer_names, models.tokenizers, strict=True)),
        **family.pipeline_options,
    )
    pipeline.set_progress_bar_config(disable=True)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, prompt in enumerate(config.sample_prompts):
        with accelerator.autocast():
            image = pipeline(
                prompt=apply_token_map(prompt, token_map),
                negative_prompt=config.sample_negative_prompt or None,
                height=config.resolution,
                width=config.resolution,
                num_inference_steps=config.sample_steps,
                generator=torch.Generator().manual_seed(config.seed),
            ).images[0]
        files.append(sample_file(folder, step, index))
        image.save(files[-1])
    return files
