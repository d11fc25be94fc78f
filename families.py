"""Facts about each supported model family, in one table.

Adding a family (SD 1.5, Flux, ...) means adding a row here plus the few family-specific
functions that really differ; training and generation code read these facts instead of
hard-coding SDXL's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


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

FAMILIES = {family.name: family for family in (SDXL,)}
