"""The SDXL components a training run needs, their adapters, and their trainable parameters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from families import SDXL

TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")


@dataclass
class SDXLComponents:
    folder: Path
    tokenizers: list[CLIPTokenizer]
    text_encoders: list  # CLIPTextModel, CLIPTextModelWithProjection
    vae: AutoencoderKL | None  # dropped after latent caching unless samples are rendered
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler


def load_components(
    folder: Path, device: torch.device, dtype: torch.dtype, full_unet: bool
) -> SDXLComponents:
    """Load every component from a diffusers SDXL folder. Frozen weights use `dtype`; a fully
    fine-tuned UNet stays in fp32 (master weights: small updates do not vanish in bf16)."""
    text_encoders = [
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype),
        CLIPTextModelWithProjection.from_pretrained(
            folder, subfolder="text_encoder_2", dtype=dtype
        ),
    ]
    # SDXL's VAE overflows in fp16: keep it in fp32 where its config says so.
    force_upcast = AutoencoderKL.load_config(folder, subfolder="vae").get("force_upcast", True)
    vae_dtype = torch.float32 if force_upcast else dtype
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=vae_dtype)
    unet_dtype = torch.float32 if full_unet else dtype
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", dtype=unet_dtype)
    for model in (*text_encoders, vae, unet):
        model.requires_grad_(False)
    return SDXLComponents(
        folder=Path(folder),
        tokenizers=[
            CLIPTokenizer.from_pretrained(
                folder, subfolder=name.replace("text_encoder", "tokenizer")
            )
            for name in TEXT_ENCODER_NAMES
        ],
        text_encoders=[encoder.to(device) for encoder in text_encoders],
        vae=vae.to(device),
        # Channels-last is the layout oneDNN (CPU) and cuDNN (GPU) convolve fastest: about a
        # fifth off each UNet step on CPU (benchmarks/bench_train.py).
        unet=unet.to(device, memory_format=torch.channels_last),
        noise_scheduler=DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
    )


def add_lora(model, rank: int, alpha: float, target_modules) -> None:
    """Attach a peft LoRA adapter; its parameters are the only trainable ones, kept in fp32
    even when the model runs in bf16 (autocast does the low-precision compute)."""
    config = LoraConfig(
        r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(target_modules)
    )
    model.add_adapter(config)
    cast_training_params(model, dtype=torch.float32)


def trainable_parameters(named_models: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    """Every parameter that requires grad, named `<model>.<parameter>` (checkpoint keys)."""
    return {
        f"{model_name}.{name}": parameter
        for model_name, model in named_models.items()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }


def encode_prompts(
    text_encoders, tokenizers, captions: list[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's text conditioning: both encoders' penultimate hidden states side by side, and
    the second encoder's pooled projection."""
    hidden_states, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        output = encoder(ids, output_hidden_states=True)
        hidden_states.append(output.hidden_states[-2])
        pooled = output[0]  # the last encoder's projected text embedding
    return torch.cat(hidden_states, dim=-1), pooled


def time_ids(pixel_sizes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """SDXL's micro-conditioning per image: original size, crop top-left, target size. The
    crops come already made, so original = target and the crop offset is zero."""
    rows = [(h, w, 0, 0, h, w) for h, w in pixel_sizes]
    assert len(rows[0]) == SDXL.base_time_ids
    return torch.tensor(rows, dtype=torch.float32, device=device)
