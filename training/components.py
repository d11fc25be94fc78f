"""The components a training run needs (of a base of any family: their classes are the
family's), their adapters and their trainable parameters."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import cast_training_params
from peft import LoKrConfig, LoraConfig, PeftConfig

from families import ModelFamily
from training.config import InvalidTrainingConfig

# The noise schedule each training objective draws from.
NOISE_SCHEDULERS = {"denoising": DDPMScheduler, "flow_matching": FlowMatchEulerDiscreteScheduler}


@dataclass
class TrainingComponents:
    folder: Path
    family: ModelFamily
    tokenizers: list  # in pipeline order (the family's tokenizer_classes)
    text_encoders: list  # in pipeline order (the family's text_encoder_classes)
    vae: torch.nn.Module | None  # dropped after latent caching unless samples are rendered
    denoiser: torch.nn.Module  # the family's UNet or transformer
    # The training noise schedule, of the family's objective.
    noise_scheduler: DDPMScheduler | FlowMatchEulerDiscreteScheduler

    def move_text_encoders(self, device: torch.device | str) -> None:
        """Move the frozen text encoders (off the GPU while they are not needed)."""
        for encoder in self.text_encoders:
            encoder.to(device)

    def named_text_encoders(self) -> dict[str, torch.nn.Module]:
        """The text encoders by their pipeline component names (`text_encoder`, ...)."""
        return dict(zip(self.family.text_encoder_names, self.text_encoders, strict=True))


def load_components(
    folder: Path,
    device: torch.device,
    dtype: torch.dtype,
    full_unet: bool,
    family: ModelFamily,
    quantization: str = "none",
) -> TrainingComponents:
    """Load every component from a diffusers folder of the supported `family`. Frozen weights
    use `dtype`; a fully fine-tuned denoiser stays in fp32 (master weights: small updates do
    not vanish in bf16). Weights load from safetensors only."""
    text_encoders = [
        getattr(transformers, class_name).from_pretrained(
            folder, subfolder=name, dtype=dtype, use_safetensors=True
        )
        for name, class_name in zip(
            family.text_encoder_names, family.text_encoder_classes, strict=True
        )
    ]
    # SDXL's VAE overflows in fp16: keep it in fp32 where its config says so.
    vae_class = getattr(diffusers, family.vae_class)
    force_upcast = vae_class.load_config(folder, subfolder="vae").get("force_upcast", True)
    vae_dtype = torch.float32 if force_upcast else dtype
    vae = vae_class.from_pretrained(folder, subfolder="vae", dtype=vae_dtype, use_safetensors=True)
    denoiser = getattr(diffusers, family.denoiser_class).from_pretrained(
        folder,
        subfolder=family.denoiser,
        dtype=torch.float32 if full_unet else dtype,
        use_safetensors=True,
    )
    for model in (*text_encoders, vae, denoiser):
        model.requires_grad_(False)
    if quantization == "int8":
        quantize_int8(denoiser)
    scheduler_class = NOISE_SCHEDULERS[family.objective]
    return TrainingComponents(
        folder=Path(folder),
        family=family,
        tokenizers=[
            getattr(transformers, class_name).from_pretrained(folder, subfolder=name)
            for name, class_name in zip(
                family.tokenizer_names, family.tokenizer_classes, strict=True
            )
        ],
        text_encoders=[encoder.to(device) for encoder in text_encoders],
        vae=vae.to(device),
        denoiser=denoiser.to(device),
        noise_scheduler=scheduler_class.from_pretrained(folder, subfolder="scheduler"),
    )


def quantize_int8(model: torch.nn.Module) -> None:
    """Every linear layer's weight in int8 (torchao weight-only: per-channel scales, computed
    in the input's precision), in place; PEFT wraps such layers as it wraps plain ones."""
    # Imported here: torchao is only needed (and its import only paid) when asked for.
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(model, Int8WeightOnlyConfig())


def add_lora(
    model, rank: int, alpha: float, target_modules: tuple[str, ...] | str, method: str
) -> None:
    """Attach a peft adapter of `method` (training/config.py LORA_METHODS); its parameters
    are the only trainable ones, kept in fp32 even when the model runs in bf16 (autocast does
    the low-precision compute). `target_modules`: module names, or one regular expression
    over the full names."""
    model.add_adapter(adapter_config(method, rank, alpha, target_modules))
    cast_training_params(model, dtype=torch.float32)


def adapter_config(
    method: str, rank: int, alpha: float, target_modules: tuple[str, ...] | str
) -> PeftConfig:
    """The peft config of a `method` adapter. Each starts as a zero change: LoRA's and DoRA's
    B at zero (DoRA's magnitude at the weight's row norms), LoKr's w1 at zero."""
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    if method == "lokr":
        return LoKrConfig(r=rank, alpha=alpha, target_modules=targets)
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        init_lora_weights="gaussian",
        target_modules=targets,
        use_dora=method == "dora",
    )


def lora_targets(model: torch.nn.Module, prefix: str, pattern: str) -> list[str]:
    """The linear and convolution layers of `model` whose names, as `<prefix>.<name>`, match
    `pattern` (searched, as Replicate's `layers_to_optimize_regex`); at least one must."""
    layers = [
        name
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
    ]
    found = [name for name in layers if re.search(pattern, f"{prefix}.{name}")]
    if not found:
        raise InvalidTrainingConfig(
            f"lora_layers_regex={pattern!r} matches no linear or convolution layer of the "
            f"{prefix} (names look like {prefix}.{layers[len(layers) // 2]})."
        )
    return found


def trainable_parameters(named_models: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    """Every parameter that requires grad, named `<model>.<parameter>` (checkpoint keys)."""
    return {
        f"{model_name}.{name}": parameter
        for model_name, model in named_models.items()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }
