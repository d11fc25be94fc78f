"""What a model family is: the interface every family implements (one module or folder per
family, registered in `families/__init__.py`).

A family holds its facts (components and their classes, sizes, pipelines, key layouts, what
it can train, how it is recognised) and the few computations that differ between families:
how a prompt becomes conditioning, how the denoiser is called on latents during training,
which names other tools give its LoRA layers, how its tiny test model is built. Shared code
(training, generation, the model store) asks the family; it never tests which family it has.
Everything here depends only on the model libraries and `formats/`, never on the halves.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# Pipeline component names of the text encoders and their tokenizers, in pipeline order; a
# family with n text encoders uses the first n.
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")
TOKENIZER_NAMES = ("tokenizer", "tokenizer_2")


class UnknownFamilyError(ValueError):
    """A model whose config matches no supported family."""


@dataclass(frozen=True)
class Conditioning:
    """A batch of prompts as the denoiser takes them: the sequence embeddings, and the pooled
    embedding for families that use one."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None


@dataclass(frozen=True)
class LatentScaling:
    """The VAE's latent normalisation of the UNet families and FLUX.1: (latent - shift) *
    scale, from the VAE's config."""

    scale: float
    shift: float = 0.0

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self.shift) * self.scale


@dataclass(frozen=True)
class ModelFamily:
    name: str  # as recorded in training_config.json
    title: str  # for messages
    # This project's container that serves the family (serving/containers.py).
    container: str
    # --- components ---------------------------------------------------------------------
    # Hidden size of each text encoder of the real model, in pipeline order.
    text_encoder_dims: tuple[int, ...]
    # transformers classes of each text encoder and tokenizer, in pipeline order.
    text_encoder_classes: tuple[str, ...]
    tokenizer_classes: tuple[str, ...]
    # The denoising model: its pipeline component name and diffusers class.
    denoiser: str
    denoiser_class: str
    vae_class: str = "AutoencoderKL"
    # The training objective: "denoising" (noise / velocity prediction on a DDPM schedule) or
    # "flow_matching" (rectified flow: predict noise - latents along a straight path).
    objective: str = "denoising"
    # --- sizes --------------------------------------------------------------------------
    native_resolution: int = 1024
    # Image sides are multiples of this (the VAE's downsampling, times any latent packing).
    pixel_multiple: int = 8
    # --- models a deployment loads --------------------------------------------------------
    default_base_model: str = ""
    default_refiner_model: str | None = None
    # --- generation -----------------------------------------------------------------------
    # diffusers pipeline class names, by generation mode.
    txt2img_pipeline: str = ""
    img2img_pipeline: str = ""
    inpaint_pipeline: str = ""
    # Options for loading the family's pipelines (components left out, checks switched off:
    # the predictor runs its own safety checker and watermark).
    pipeline_options: dict = field(default_factory=dict, hash=False, compare=False)
    negative_prompt: bool = True  # the pipelines take a negative prompt
    named_schedulers: bool = True  # a request may pick the sampler by name
    # The img2img pipeline needs the image's width and height (else it works at its default).
    img2img_takes_size: bool = False
    # The denoiser is convolutional: channels-last memory speeds it up on GPUs.
    channels_last: bool = False
    # Reference images (editing): the keyword under which each mode's pipeline takes a list
    # of them ("txt2img", "inpaint"); empty: the family's pipelines take none.
    reference_keywords: dict = field(default_factory=dict, hash=False, compare=False)
    # A request's `image` without a mask is a reference image to edit from (the txt2img
    # pipeline, at the image's size), not img2img's starting point.
    image_is_reference: bool = False
    # --- training: what the family can train ------------------------------------------------
    # Keys of the textual-inversion files, one per text encoder; empty: no new tokens train.
    pti_keys: tuple[str, ...] = ()  # embeddings.pti (Replicate's SDXL trainer layout)
    embedding_keys: tuple[str, ...] = ()  # embeddings.safetensors (A1111 / ComfyUI layout)
    full_fine_tune: bool = True  # the whole denoiser can train (is_lora=false)
    text_encoder_lora: bool = True  # a LoRA can train on the text encoders
    # LoRA methods (training/config.py LORA_METHODS) its exported names can carry.
    lora_methods: tuple[str, ...] = ("lora", "dora", "lokr")
    # Modules LoRA trains by default: names (a module matches by its last parts) or one
    # regular expression over the full module names.
    lora_target_modules: tuple[str, ...] | str = ("to_q", "to_k", "to_v", "to_out.0")
    text_encoder_lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    # --- other tools' names ---------------------------------------------------------------
    # kohya's key prefix for the denoiser and each text encoder.
    kohya_unet_prefix: str = "lora_unet"
    kohya_text_encoder_prefixes: tuple[str, ...] = ()
    # The model card's section on other tools: its title, and what lora_kohya.safetensors is
    # there ("the LoRA in kohya layout (`models/loras/` in ComfyUI, ...)").
    other_tools: str = "ComfyUI / AUTOMATIC1111"
    kohya_file_use: str = ""
    # --- recognising the family ---------------------------------------------------------------
    # Tensor-name prefixes of its original single-file checkpoints.
    single_file_prefixes: tuple[str, ...] = ()
    # Fragments of tensor names that only this family's trained weights have.
    weight_name_markers: tuple[str, ...] = ()
    # When another family's markers match too, the family of higher priority is the one
    # (a family whose names contain another's markers ranks above it).
    marker_priority: int = 0
    # The embedded tiny model of the family's real classes (BASE_MODEL=<tiny_model>), and the
    # roles it has (a refiner beside the base).
    tiny_model: str | None = None
    tiny_roles: tuple[str, ...] = ("base",)

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        return TEXT_ENCODER_NAMES[: len(self.text_encoder_dims)]

    @property
    def tokenizer_names(self) -> tuple[str, ...]:
        return TOKENIZER_NAMES[: len(self.text_encoder_dims)]

    @property
    def trains_tokens(self) -> bool:
        return bool(self.pti_keys)

    @property
    def pipelines(self) -> tuple[str, str, str]:
        return (self.txt2img_pipeline, self.img2img_pipeline, self.inpaint_pipeline)

    # --- training -----------------------------------------------------------------------------

    def training_latents(self, vae) -> Callable[[torch.Tensor], torch.Tensor]:
        """How a sample of `vae`'s latent distribution ([B, C, h, w]) becomes the latents the
        denoiser learns on, as the family's pipelines normalise (and rearrange) them; built
        once from the VAE, and kept when the VAE is dropped. Its output is what `denoise`
        takes, [B, C', h', w']."""
        return LatentScaling(vae.config.scaling_factor, vae.config.get("shift_factor") or 0.0)

    def encode_prompt(
        self, text_encoders, tokenizers, captions: list[str], device: torch.device
    ) -> Conditioning:
        """The text conditioning as the family's pipelines compute it."""
        raise NotImplementedError

    def denoise(
        self,
        denoiser: torch.nn.Module,
        noisy: torch.Tensor,
        time: torch.Tensor,
        conditioning: Conditioning,
        pixel_sizes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """The denoiser's prediction for `noisy` latents [B, C, h, w] (in that layout) at
        `time`: DDPM timesteps for the denoising objective, sigmas for flow matching.
        `pixel_sizes`: each image's (height, width)."""
        raise NotImplementedError

    def training_problems(self, config) -> list[str]:
        """What a training config (training/config.py) asks that this family cannot train,
        each said as what to change."""
        problems = []
        if config.trains_tokens and not self.trains_tokens:
            problems.append(
                f"{self.title} trains no new tokens: set ti_lr=0 (the trigger word stays a "
                "word of the captions)."
            )
        if self.objective != "denoising":
            for name in ("min_snr_gamma", "noise_offset"):
                if getattr(config, name):
                    problems.append(
                        f"{name} is a setting of noise-prediction training; {self.title} "
                        f"trains by {self.objective.replace('_', ' ')}: set {name}=0."
                    )
        if (config.trains_full_unet and not self.full_fine_tune) or (
            config.train_text_encoder and not self.text_encoder_lora
        ):
            problems.append(
                f"{self.title} trains a LoRA on its {self.denoiser} only: use is_lora=true "
                "and train_text_encoder=false."
            )
        if config.lora_method not in self.lora_methods:
            problems.append(
                f"lora_method={config.lora_method!r}: {self.title} trains "
                f"{' or '.join(self.lora_methods)} here: set lora_method='lora'."
            )
        return problems

    def kohya_lora(
        self, lora: dict[str, torch.Tensor], adapters: dict[str, dict], denoiser: torch.nn.Module
    ) -> dict[str, torch.Tensor]:
        """The LoRA of `lora.safetensors` (diffusers keys; `adapters`: each component's peft
        config) in the names ComfyUI, A1111 and kohya's tools load. May raise ValueError
        when the LoRA has layers those names cannot express."""
        raise NotImplementedError

    # --- generation ---------------------------------------------------------------------------

    def shared_pipeline_options(self, pipeline) -> dict:
        """The constructor options (not components) the other modes' pipelines copy from
        `pipeline`."""
        return {}

    def served_variant(self, pipeline) -> str | None:
        """Which variant of the family a loaded pipeline is (a request may name it), if the
        family has variants."""
        return None

    def original_layer_names(
        self, denoiser: torch.nn.Module, layers: set[str]
    ) -> dict[str, tuple[str, ...]]:
        """The denoiser's layers by the original checkpoint's names (without `.weight`), as
        kohya-named files write them: name -> the diffusers layers it stands for, whose
        weights stacked by rows form its weight."""
        return {}

    # --- recognising the family ---------------------------------------------------------------

    def matches_denoiser_config(self, config: dict[str, Any]) -> bool:
        """Whether a denoiser config (`<denoiser>/config.json` of a diffusers folder whose
        pipeline class tells nothing) is this family's. Two families may share a class (SDXL's
        and SD 1.5's UNet): the config's fields tell them apart."""
        return config.get("_class_name") == self.denoiser_class

    def build_tiny(self, role: str):
        """The embedded tiny model of `role` (one of `tiny_roles`): a diffusers pipeline of
        the family's classes, random weights from fixed seeds (two builds are identical)."""
        raise NotImplementedError


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
