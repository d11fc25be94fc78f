"""SDXL base's real architecture (stabilityai/stable-diffusion-xl-base-1.0's configs) with random
weights, built on the meta device and materialised where it runs: the benchmarks' way to
measure real-size models without a download."""

from __future__ import annotations

from pathlib import Path

import torch

# unet/config.json
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
# vae/config.json
SDXL_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)
# text_encoder/config.json (CLIP ViT-L) and text_encoder_2/config.json (OpenCLIP bigG).
SDXL_TEXT_ENCODERS = (
    dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
         projection_dim=768, hidden_act="quick_gelu"),
    dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
         num_attention_heads=20, projection_dim=1280, hidden_act="gelu"),
)  # fmt: skip
CLIP_VOCABULARY = 49408


def materialise(module: torch.nn.Module, device, dtype) -> torch.nn.Module:
    """A module built on the meta device, given storage on `device` and small random weights.
    Tiling one random block is much faster than drawing billions of numbers."""
    module = module.to(dtype).to_empty(device=device)
    block = (torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)) * 0.02).to(dtype)
    block = block.to(device)
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            flat = tensor.view(-1)
            for start in range(0, flat.numel(), block.numel()):
                end = min(start + block.numel(), flat.numel())
                flat[start:end].copy_(block[: end - start].to(flat.dtype))
    return module


def build_unet(device, dtype):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
    return materialise(unet, device, dtype)


def save_sdxl_folder(folder: Path, device, dtype) -> Path:
    """A diffusers folder of SDXL base's architecture with random weights (the embedded tiny
    tokenizers: their ids are valid in the real vocabulary)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from families.sdxl.tiny import SDXL_SCHEDULER
    from families.tiny_parts import build_tokenizer

    with torch.device("meta"):
        encoders = [
            model_class(
                CLIPTextConfig(vocab_size=CLIP_VOCABULARY, max_position_embeddings=77, **config)
            )  # fmt: skip
            for model_class, config in zip(
                (CLIPTextModel, CLIPTextModelWithProjection), SDXL_TEXT_ENCODERS, strict=True
            )
        ]
        vae = AutoencoderKL(**SDXL_VAE)
    pipeline = StableDiffusionXLPipeline(
        vae=materialise(vae, device, dtype),
        text_encoder=materialise(encoders[0], device, dtype),
        text_encoder_2=materialise(encoders[1], device, dtype),
        tokenizer=build_tokenizer(pad_token="<|endoftext|>"),
        tokenizer_2=build_tokenizer(pad_token="!"),
        unet=build_unet(device, dtype),
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder
