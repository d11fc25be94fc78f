"""Facts about each supported model family, in one table.

Adding a family (SD 1.5, Flux, ...) means adding a row here plus the few family-specific
functions that really differ; training and generation code read these facts instead of
hard-coding SDXL's numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelFamily:
    name: str
    # Hidden size of each text encoder of the real model, in pipeline order.
    text_encoder_dims: tuple[int, ...]
    native_resolution: int
    default_base_model: str
    default_refiner_model: str | None
    # diffusers pipeline class names, by generation mode.
    txt2img_pipeline: str
    img2img_pipeline: str
    inpaint_pipeline: str
    # Number of micro-conditioning time ids the base UNet expects (SDXL: original size,
    # crop top-left, target size); the refiner uses an aesthetic score instead of target size.
    base_time_ids: int | None
    refiner_time_ids: int | None
    # Keys of the textual-inversion files, one per text encoder.
    pti_keys: tuple[str, ...]  # embeddings.pti (Replicate's SDXL trainer layout)
    embedding_keys: tuple[str, ...]  # embeddings.safetensors (A1111 / ComfyUI layout)
    # kohya's key prefix for the UNet and each text encoder.
    kohya_unet_prefix: str
    kohya_text_encoder_prefixes: tuple[str, ...]
    # Attention projections LoRA trains by default.
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    # Text-encoder attention projections a text-encoder LoRA trains.
    text_encoder_lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")


SDXL = ModelFamily(
    name="sdxl",
    text_encoder_dims=(768, 1280),
    native_resolution=1024,
    default_base_model="stabilityai/stable-diffusion-xl-base-1.0",
    default_refiner_model="stabilityai/stable-diffusion-xl-refiner-1.0",
    txt2img_pipeline="StableDiffusionXLPipeline",
    img2img_pipeline="StableDiffusionXLImg2ImgPipeline",
    inpaint_pipeline="StableDiffusionXLInpaintPipeline",
    base_time_ids=6,
    refiner_time_ids=5,
    pti_keys=("text_encoders_0", "text_encoders_1"),
    embedding_keys=("clip_l", "clip_g"),
    kohya_unet_prefix="lora_unet",
    kohya_text_encoder_prefixes=("lora_te1", "lora_te2"),
)

SD15 = ModelFamily(
    name="sd15",
    text_encoder_dims=(768,),
    native_resolution=512,
    default_base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
    default_refiner_model=None,
    txt2img_pipeline="StableDiffusionPipeline",
    img2img_pipeline="StableDiffusionImg2ImgPipeline",
    inpaint_pipeline="StableDiffusionInpaintPipeline",
    base_time_ids=None,
    refiner_time_ids=None,
    pti_keys=("text_encoders_0",),
    # The key of A1111 / kohya SD 1.5 .safetensors embeddings (diffusers' load_textual_inversion
    # and A1111 read any single-key file; ComfyUI looks for this name).
    embedding_keys=("emb_params",),
    kohya_unet_prefix="lora_unet",
    kohya_text_encoder_prefixes=("lora_te",),
)

FAMILIES = {family.name: family for family in (SDXL, SD15)}


class UnknownFamilyError(ValueError):
    """A model whose config matches no supported family."""


def detect_family(model_folder: Path) -> ModelFamily:
    """The family of a diffusers model folder, read from its config (never from its name):
    the pipeline class in model_index.json, else whether the UNet has SDXL's text_time
    micro-conditioning. A single-file checkpoint is read from its tensor names."""
    folder = Path(model_folder)
    if folder.is_file():
        return _single_file_family(folder)
    index = _read_json(folder / "model_index.json")
    pipeline_class = index.get("_class_name")
    for family in FAMILIES.values():
        if pipeline_class in (
            family.txt2img_pipeline,
            family.img2img_pipeline,
            family.inpaint_pipeline,
        ):
            return family
    unet = _read_json(folder / "unet" / "config.json")
    if unet:
        return SDXL if unet.get("addition_embed_type") == "text_time" else SD15
    raise UnknownFamilyError(
        f"{folder} is not a model of a supported family ({', '.join(FAMILIES)}): its "
        f"model_index.json names pipeline {pipeline_class!r} and it has no unet/config.json."
    )


# Tensor-name prefixes of the original (single-file) checkpoints' text encoders.
SINGLE_FILE_TEXT_ENCODER_PREFIXES = {"conditioner.embedders.": SDXL, "cond_stage_model.": SD15}


def _single_file_family(checkpoint: Path) -> ModelFamily:
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as tensors:
        names = list(tensors.keys())
    for prefix, family in SINGLE_FILE_TEXT_ENCODER_PREFIXES.items():
        if any(name.startswith(prefix) for name in names):
            return family
    raise UnknownFamilyError(
        f"{checkpoint} is not a checkpoint of a supported family ({', '.join(FAMILIES)}): "
        f"no tensor names start with {' or '.join(SINGLE_FILE_TEXT_ENCODER_PREFIXES)}."
    )


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
