"""Stable Diffusion XL: two CLIP text encoders (the second pooled and projected), a UNet with
size micro-conditioning, and a refiner."""

from __future__ import annotations

from dataclasses import dataclass

from families.unet import UNetFamily


@dataclass(frozen=True)
class SDXLFamily(UNetFamily):
    def shared_pipeline_options(self, pipeline) -> dict:
        return {
            "force_zeros_for_empty_prompt": pipeline.config.force_zeros_for_empty_prompt,
            "requires_aesthetics_score": pipeline.config.get("requires_aesthetics_score", False),
            "add_watermarker": False,
        }

    def matches_denoiser_config(self, config) -> bool:
        return super().matches_denoiser_config(config) and (
            config.get("addition_embed_type") == "text_time"
        )

    def build_tiny(self, role: str):
        from families.sdxl.tiny import build_tiny_sdxl

        return build_tiny_sdxl(role)


SDXL = SDXLFamily(
    name="sdxl",
    title="SDXL",
    container="sdxl",
    text_encoder_dims=(768, 1280),
    text_encoder_classes=("CLIPTextModel", "CLIPTextModelWithProjection"),
    tokenizer_classes=("CLIPTokenizer", "CLIPTokenizer"),
    denoiser="unet",
    denoiser_class="UNet2DConditionModel",
    native_resolution=1024,
    pixel_multiple=8,
    default_base_model="stabilityai/stable-diffusion-xl-base-1.0",
    default_refiner_model="stabilityai/stable-diffusion-xl-refiner-1.0",
    txt2img_pipeline="StableDiffusionXLPipeline",
    img2img_pipeline="StableDiffusionXLImg2ImgPipeline",
    inpaint_pipeline="StableDiffusionXLInpaintPipeline",
    # No invisible watermark inside the pipelines: the predictor marks after its safety check.
    pipeline_options=dict(add_watermarker=False),
    channels_last=True,
    pti_keys=("text_encoders_0", "text_encoders_1"),
    embedding_keys=("clip_l", "clip_g"),
    kohya_unet_prefix="lora_unet",
    kohya_text_encoder_prefixes=("lora_te1", "lora_te2"),
    kohya_file_use=(
        "the LoRA in kohya layout (`models/loras/` in ComfyUI, `models/Lora/` in A1111)."
    ),
    single_file_prefixes=("conditioner.embedders.",),
    # Its second text encoder, its added embedding and its deeper transformer blocks.
    weight_name_markers=(
        "text_encoder_2.",
        "lora_te2_",
        "add_embedding.",
        "transformer_blocks.1.",
        "transformer_blocks_1_",
    ),
    tiny_model="tiny",
    tiny_roles=("base", "refiner"),
    prompt_from_penultimate_layer=True,
    base_time_ids=6,
)
