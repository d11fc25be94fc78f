"""The embedded tiny SDXL (`BASE_MODEL=tiny`): two CLIP text encoders of different widths, a
text_time UNet, an 8x VAE, the SDXL Euler scheduler, and a refiner."""

from __future__ import annotations

import torch
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

from families.tiny_parts import (
    PROJECTION_DIM,
    SAMPLE_SIZE,
    TEXT_ENCODER_DIMS,
    build_text_encoder,
    build_tokenizer,
    build_vae,
)

TIME_EMBED_DIM = 8

# SDXL base's scheduler settings (stabilityai/stable-diffusion-xl-base-1.0).
SDXL_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    interpolation_type="linear",
    timestep_spacing="leading",
    steps_offset=1,
    use_karras_sigmas=False,
)
SDXL_VAE_SCALING = 0.13025


def build_tiny_sdxl(role: str):
    tokenizer_2 = build_tokenizer(pad_token="!")  # SDXL's second tokenizer pads with "!"
    text_encoder_2 = build_text_encoder(1, with_projection=True)
    vae = build_vae(SDXL_VAE_SCALING)
    scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER)
    if role == "base":
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=build_text_encoder(0, with_projection=False),
            text_encoder_2=text_encoder_2,
            tokenizer=build_tokenizer(pad_token="<|endoftext|>"),
            tokenizer_2=tokenizer_2,
            unet=build_base_unet(),
            scheduler=scheduler,
        )
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=tokenizer_2,
        unet=build_refiner_unet(),
        scheduler=scheduler,
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def build_base_unet() -> UNet2DConditionModel:
    torch.manual_seed(1)
    return UNet2DConditionModel(
        sample_size=SAMPLE_SIZE,
        block_out_channels=(32, 32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 2, 4),
        norm_num_groups=8,
        use_linear_projection=True,
        cross_attention_dim=sum(TEXT_ENCODER_DIMS),
        addition_embed_type="text_time",
        addition_embed_type_num_heads=8,
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + PROJECTION_DIM,
    )


def build_refiner_unet() -> UNet2DConditionModel:
    torch.manual_seed(2)
    return UNet2DConditionModel(
        sample_size=SAMPLE_SIZE,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        down_block_types=(
            "DownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 1, 1),
        attention_head_dim=(2, 2, 4, 4),
        norm_num_groups=8,
        use_linear_projection=True,
        cross_attention_dim=TEXT_ENCODER_DIMS[1],  # the refiner only has the second encoder
        addition_embed_type="text_time",
        addition_embed_type_num_heads=8,
        addition_time_embed_dim=TIME_EMBED_DIM,
        # 5 time ids: original size, crop top-left, aesthetic score.
        projection_class_embeddings_input_dim=5 * TIME_EMBED_DIM + PROJECTION_DIM,
    )
