"""Stable Diffusion 1.5: one CLIP text encoder (its last layer, no pooled embedding) and a
UNet without micro-conditioning."""

from __future__ import annotations

from dataclasses import dataclass

from families.unet import UNetFamily


@dataclass(frozen=True)
class SD15Family(UNetFamily):
    def shared_pipeline_options(self, pipeline) -> dict:
        return {"requires_safety_checker": False}

    def matches_denoiser_config(self, config) -> bool:
        return super().matches_denoiser_config(config) and (
            config.get("addition_embed_type") != "text_time"
        )

    def build_tiny(self, role: str):
        from families.sd15.tiny import build_tiny_sd15

        return build_tiny_sd15()


SD15 = SD15Family(
    name="sd15",
    title="SD 1.5",
    container="sdxl",
    text_encoder_dims=(768,),
    text_encoder_classes=("CLIPTextModel",),
    tokenizer_classes=("CLIPTokenizer",),
    denoiser="unet",
    denoiser_class="UNet2DConditionModel",
    native_resolution=512,
    pixel_multiple=8,
    default_base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
    txt2img_pipeline="StableDiffusionPipeline",
    img2img_pipeline="StableDiffusionImg2ImgPipeline",
    inpaint_pipeline="StableDiffusionInpaintPipeline",
    # No safety checker inside the pipelines: the predictor runs its own.
    pipeline_options=dict(
        safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ),
    channels_last=True,
    pti_keys=("text_encoders_0",),
    # The key of A1111 / kohya SD 1.5 .safetensors embeddings (diffusers' load_textual_inversion
    # and A1111 read any single-key file; ComfyUI looks for this name).
    embedding_keys=("emb_params",),
    kohya_unet_prefix="lora_unet",
    kohya_text_encoder_prefixes=("lora_te",),
    kohya_file_use=(
        "the LoRA in kohya layout (`models/loras/` in ComfyUI, `models/Lora/` in A1111)."
    ),
    single_file_prefixes=("cond_stage_model.",),
    # Its lone text encoder (kohya `lora_te_`) and the attention of its first down block
    # (SDXL's first down block has none).
    weight_name_markers=(
        "lora_te_",
        "down_blocks.0.attentions.",
        "down_blocks_0_attentions_",
        "input_blocks_1_1_",
    ),
    tiny_model="tiny-sd15",
)
