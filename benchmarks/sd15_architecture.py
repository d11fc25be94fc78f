"""SD 1.5's real architecture (stable-diffusion-v1-5/stable-diffusion-v1-5's configs) with
random weights, built on the meta device and materialised where it runs, saved as a diffusers
folder (see sdxl_architecture.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.sdxl_architecture import CLIP_VOCABULARY, SDXL_TEXT_ENCODERS, SDXL_VAE, materialise

# unet/config.json
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
)
SD15_VAE = {**SDXL_VAE, "sample_size": 512, "scaling_factor": 0.18215}


def save_sd15_folder(folder: Path, device, dtype) -> Path:
    """A diffusers folder of SD 1.5's architecture with random weights (the embedded tiny
    tokenizer: its ids are valid in the real vocabulary)."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from families.sd15.tiny import SD15_SCHEDULER
    from families.tiny_parts import build_tokenizer

    with torch.device("meta"):
        encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=CLIP_VOCABULARY, max_position_embeddings=77, **SDXL_TEXT_ENCODERS[0]
            )
        )
        vae = AutoencoderKL(**SD15_VAE)
        unet = UNet2DConditionModel(**SD15_UNET)
    pipeline = StableDiffusionPipeline(
        vae=materialise(vae, device, dtype),
        text_encoder=materialise(encoder, device, dtype),
        tokenizer=build_tokenizer(pad_token="<|endoftext|>"),
        unet=materialise(unet, device, dtype),
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return Path(folder)
