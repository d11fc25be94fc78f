"""Images rendered with the model being trained: the sample prompts, as the weights train, and
the class images of prior preservation, by the base model before anything trains."""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch
from diffusers import EulerDiscreteScheduler

from formats.dataset_folder import CaptionedImage
from formats.tokens import apply_token_map
from training.components import TrainingComponents
from training.config import TrainingConfig
from training.schedule import seeded


def sample_file(folder: Path, step: int, index: int) -> Path:
    return folder / f"step-{step:06d}-{index}.png"


@torch.no_grad()
def render_samples(
    models: TrainingComponents, config: TrainingConfig, token_map, folder: Path, step, accelerator
):
    """One image per sample prompt at the training resolution, same seed every time, so the
    images of successive steps show how the training moves. Text encoders the loop moved off
    the GPU come back for it, and leave again."""
    pipeline = _pipeline(models)
    folder.mkdir(parents=True, exist_ok=True)
    files, encoders_device = [], models.text_encoders[0].device
    models.move_text_encoders(accelerator.device)
    try:
        for index, prompt in enumerate(config.sample_prompts):
            with accelerator.autocast():
                image = pipeline(
                    prompt=apply_token_map(prompt, token_map),
                    **_negative(models, config),
                    height=config.resolution,
                    width=config.resolution,
                    num_inference_steps=config.sample_steps,
                    generator=torch.Generator().manual_seed(config.seed),
                ).images[0]
            files.append(sample_file(folder, step, index))
            image.save(files[-1])
    finally:
        models.move_text_encoders(encoders_device)
    return files


@torch.no_grad()
def render_class_images(
    models: TrainingComponents, config: TrainingConfig, folder: Path, accelerator
) -> list[CaptionedImage]:
    """`num_class_images` images of the class prompts (in turn), drawn by the base model before
    anything trains: what prior preservation keeps the model drawing for them. Rendered by the
    main process; every process gets the same list."""
    items = [
        CaptionedImage(folder / f"class-{index:04d}.png", None, prompt)
        for index, prompt in zip(
            range(config.num_class_images),
            config.class_prompt * config.num_class_images,
            strict=False,
        )
    ]
    if accelerator.is_main_process:
        pipeline = _pipeline(models)
        folder.mkdir(parents=True, exist_ok=True)
        for index, item in enumerate(items):
            with accelerator.autocast():
                image = pipeline(
                    prompt=item.caption,
                    **_negative(models, config),
                    height=config.resolution,
                    width=config.resolution,
                    num_inference_steps=config.sample_steps,
                    generator=torch.Generator().manual_seed(seeded(config.seed, index, 0xC1A55)),
                ).images[0]
            image.save(item.image_path)
    accelerator.wait_for_everyone()
    return items


def _pipeline(models: TrainingComponents):
    """The family's text-to-image pipeline on the training components, as they are now."""
    family = models.family
    # Euler for the UNet families (their training scheduler is DDPM's), the model's own
    # flow-matching Euler for Flux.
    scheduler_class = (
        EulerDiscreteScheduler if family.named_schedulers else type(models.noise_scheduler)
    )
    pipeline = getattr(diffusers, family.txt2img_pipeline)(
        vae=models.vae,
        **{family.denoiser: models.denoiser},
        scheduler=scheduler_class.from_pretrained(models.folder, subfolder="scheduler"),
        **models.named_text_encoders(),
        **dict(zip(family.tokenizer_names, models.tokenizers, strict=True)),
        **family.pipeline_options,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _negative(models: TrainingComponents, config: TrainingConfig) -> dict:
    if not models.family.negative_prompt:
        return {}
    return {"negative_prompt": config.sample_negative_prompt or None}
