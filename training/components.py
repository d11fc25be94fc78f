"""The components a training run needs (of an SDXL or SD 1.5 base: the family is read from
the model's config), their adapters, their trainable parameters, and the UNet's conditioning."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from transformers import CLIPTokenizer

from families import ModelFamily, detect_family


@dataclass
class TrainingComponents:
    folder: Path
    family: ModelFamily
    tokenizers: list[CLIPTokenizer]
    text_encoders: list  # in pipeline order (the family's text_encoder_classes)
    vae: AutoencoderKL | None  # dropped after latent caching unless samples are rendered
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler

    def named_text_encoders(self) -> dict[str, torch.nn.Module]:
        """The text encoders by their pipeline component names (`text_encoder`, ...)."""
        return dict(zip(self.family.text_encoder_names, self.text_encoders, strict=True))


def load_components(
    folder: Path,
    device: torch.device,
    dtype: torch.dtype,
    full_unet: bool,
    family: ModelFamily | None = None,
) -> TrainingComponents:
    """Load every component from a diffusers folder of a supported family (`family`, or read
    from its config). Frozen weights use `dtype`; a fully fine-tuned UNet stays in fp32
    (master weights: small updates do not vanish in bf16). Weights load from safetensors only."""
    family = family or detect_family(folder)
    text_encoders = [
        getattr(transformers, class_name).from_pretrained(
            folder, subfolder=name, dtype=dtype, use_safetensors=True
        )
        for name, class_name in zip(
            family.text_encoder_names, family.text_encoder_classes, strict=True
        )
    ]
    # SDXL's VAE overflows in fp16: keep it in fp32 where its config says so.
    force_upcast = AutoencoderKL.load_config(folder, subfolder="vae").get("force_upcast", True)
    vae_dtype = torch.float32 if force_upcast else dtype
    vae = AutoencoderKL.from_pretrained(
        folder, subfolder="vae", dtype=vae_dtype, use_safetensors=True
    )
    unet_dtype = torch.float32 if full_unet else dtype
    unet = UNet2DConditionModel.from_pretrained(
        folder, subfolder="unet", dtype=unet_dtype, use_safetensors=True
    )
    for model in (*text_encoders, vae, unet):
        model.requires_grad_(False)
    return TrainingComponents(
        folder=Path(folder),
        family=family,
        tokenizers=[
            CLIPTokenizer.from_pretrained(folder, subfolder=name) for name in family.tokenizer_names
        ],
        text_encoders=[encoder.to(device) for encoder in text_encoders],
        vae=vae.to(device),
        unet=unet.to(device),
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
    family: ModelFamily, text_encoders, tokenizers, captions: list[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The text conditioning as the family's pipelines compute it. SDXL: both encoders'
    penultimate hidden states side by side, and the second encoder's pooled projection.
    SD 1.5: the encoder's last hidden state (after the final layer norm), no pooled output."""
    hidden_states, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        if family.prompt_from_penultimate_layer:
            output = encoder(ids, output_hidden_states=True)
            hidden_states.append(output.hidden_states[-2])
            pooled = output[0]  # the last encoder's projected text embedding
        else:
            hidden_states.append(encoder(ids)[0])
    return torch.cat(hidden_states, dim=-1), pooled


def added_conditions(
    family: ModelFamily,
    pooled: torch.Tensor | None,
    pixel_sizes: list[tuple[int, int]],
    device: torch.device,
) -> dict[str, torch.Tensor] | None:
    """The UNet's `added_cond_kwargs`: for SDXL the pooled text embedding and the
    micro-conditioning per image (original size, crop top-left, target size; the crops come
    already made, so original = target and the offset is zero); None for SD 1.5."""
    if not family.uses_text_time:
        return None
    rows = [(h, w, 0, 0, h, w) for h, w in pixel_sizes]
    assert len(rows[0]) == family.base_time_ids
    time_ids = torch.tensor(rows, dtype=torch.float32, device=device)
    return {"text_embeds": pooled, "time_ids": time_ids}
