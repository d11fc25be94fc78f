"""The embedded tiny SD 1.5 (`BASE_MODEL=tiny-sd15`): one CLIP text encoder, a UNet without
micro-conditioning, an 8x VAE, SD 1.5's PNDM scheduler, no safety checker."""

from __future__ import annotations

import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from families.tiny_parts import (
    SAMPLE_SIZE,
    TEXT_ENCODER_DIMS,
    build_text_encoder,
    build_tokenizer,
    build_vae,
)

# SD 1.5's scheduler settings (stable-diffusion-v1-5/stable-diffusion-v1-5; its config's
# clip_sample=False is a DDIM setting PNDM does not take).
SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
)
SD15_VAE_SCALING = 0.18215


def build_tiny_sd15() -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=build_vae(SD15_VAE_SCALING),
        text_encoder=build_text_encoder(0, with_projection=False),
        tokenizer=build_tokenizer(pad_token="<|endoftext|>"),
        unet=build_sd15_unet(),
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sd15_unet() -> UNet2DConditionModel:
    """SD 1.5's layout (three cross-attention levels, then a plain one; no text_time)."""
    torch.manual_seed(4)
    return UNet2DConditionModel(
        sample_size=SAMPLE_SIZE,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        attention_head_dim=4,
        norm_num_groups=8,
        cross_attention_dim=TEXT_ENCODER_DIMS[0],
    )
