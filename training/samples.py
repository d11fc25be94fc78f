"""Sample images rendered with the weights as they are being trained."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

from training.captions import apply_token_map
from training.config import TrainingConfig


def sample_file(folder: Path, step: int, index: int) -> Path:
    return folder / f"step-{step:06d}-{index}.png"


@torch.no_grad()
def render_samples(models, config: TrainingConfig, token_map, folder: Path, step: int, accelerator):
    """One image per sample prompt at the training resolution, same seed every time, so the
    images of successive steps show how the training moves."""
    pipeline = StableDiffusionXLPipeline(
        vae=models.vae,
        text_encoder=models.text_encoders[0],
        text_encoder_2=models.text_encoders[1],
        tokenizer=models.tokenizers[0],
        tokenizer_2=models.tokenizers[1],
        unet=models.unet,
        scheduler=EulerDiscreteScheduler.from_pretrained(models.folder, subfolder="scheduler"),
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
