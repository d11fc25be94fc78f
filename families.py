"""Facts about each supported model family (SDXL, SD 1.5, FLUX.1), in one table.

Adding a family means adding a row here plus the few family-specific functions that really
differ; training and generation code read these facts instead of hard-coding SDXL's numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# Pipeline component names of the text encoders and their tokenizers, in pipeline order; a
# family with n text encoders uses the first n.
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")
TOKENIZER_NAMES = ("tokenizer", "tokenizer_2")


@dataclass(frozen=True)
class ModelFamily:
    name: str
    title: str  # for messages
    # Hidden size of each text encoder of the real model, in pipeline order.
    text_encoder_dims: tuple[int, ...]
    # transformers class of each text encoder, in pipeline order.
    text_encoder_classes: tuple[str, ...]
    # Prompt embeddings: the encoders' penultimate hidden states (SDXL) or the last one after
    # the final layer norm (SD 1.5), as the family's pipelines compute them.
    prompt_from_penultimate_layer: bool
    native_resolution: int
    default_base_model: str
    default_refiner_model: str | None
    # Image sides are multiples of this: the VAE's 8, times 2 for Flux's 2x2 latent packing.
    pixel_multiple: int
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
    # kohya's key prefix for the denoiser and each text encoder.
    kohya_unet_prefix: str
    kohya_text_encoder_prefixes: tuple[str, ...]
    # The kohya file's module names: the original SGM UNet's ("sgm", SDXL and SD 1.5) or
    # BFL's Flux transformer, with q/k/v fused ("bfl").
    kohya_layout: str = "sgm"
    # The denoising model: its pipeline component name and diffusers class.
    denoiser: str = "unet"
    denoiser_class: str = "UNet2DConditionModel"
    # The training objective: "denoising" (noise / velocity prediction on a DDPM schedule) or
    # "flow_matching" (rectified flow: predict noise - image along a straight path).
    objective: str = "denoising"
    # transformers class of each tokenizer, in pipeline order.
    tokenizer_classes: tuple[str, ...] = ("CLIPTokenizer", "CLIPTokenizer")
    # Tokens of the sequence text encoder's prompt (Flux's T5; CLIP families: the tokenizer's).
    max_sequence_length: int | None = None
    # Whether the pipelines take a negative prompt and a scheduler by name (Flux: neither; its
    # guidance is distilled into the model and its scheduler is fixed).
    negative_prompt: bool = True
    named_schedulers: bool = True
    # Whether the img2img pipeline needs the image's width and height (Flux's otherwise
    # resizes to its default size; SDXL's takes the image's own).
    img2img_takes_size: bool = False
    # Modules LoRA trains by default: names (a module matches by its last parts) or one regular
    # expression over the full module names.
    lora_target_modules: tuple[str, ...] | str = ("to_q", "to_k", "to_v", "to_out.0")
    # Text-encoder attention projections a text-encoder LoRA trains.
    text_encoder_lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    # Options for loading the family's pipelines: no invisible watermark inside them (the
    # predictor marks after its safety check) and no SD 1.5 safety checker inside them (the
    # predictor runs its own).
    pipeline_options: dict = field(default_factory=dict, hash=False, compare=False)
    # The name of this project's container that serves the family (serving/containers.py).
    container: str = "sdxl"

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        return TEXT_ENCODER_NAMES[: len(self.text_encoder_dims)]

    @property
    def tokenizer_names(self) -> tuple[str, ...]:
        return TOKENIZER_NAMES[: len(self.text_encoder_dims)]

    @property
    def uses_text_time(self) -> bool:
        """Whether the UNet takes the pooled text embedding and time ids (`added_cond_kwargs`)."""
        return self.base_time_ids is not None


SDXL = ModelFamily(
    name="sdxl",
    title="SDXL",
    text_encoder_dims=(768, 1280),
    text_encoder_classes=("CLIPTextModel", "CLIPTextModelWithProjection"),
    prompt_from_penultimate_layer=True,
    native_resolution=1024,
    pixel_multiple=8,
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
    pipeline_options=dict(add_watermarker=False),
)

SD15 = ModelFamily(
    name="sd15",
    title="SD 1.5",
    text_encoder_dims=(768,),
    text_encoder_classes=("CLIPTextModel",),
    tokenizer_classes=("CLIPTokenizer",),
    prompt_from_penultimate_layer=False,
    native_resolution=512,
    pixel_multiple=8,
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
    pipeline_options=dict(
        safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ),
)

# The modules of FLUX.1's 19 double-stream and 38 single-stream blocks a LoRA trains: every
# attention projection and MLP (as Replicate's / ai-toolkit's Flux trainer), not the
# modulation layers, the embedders or the final projection.
FLUX_LORA_TARGETS = (
    r"(transformer_blocks\.\d+\.(attn\.(to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)"
    r"|ff(_context)?\.net\.(0\.proj|2))"
    r"|single_transformer_blocks\.\d+\.(attn\.to_[qkv]|proj_mlp|proj_out))"
)

FLUX = ModelFamily(
    name="flux",
    title="FLUX.1",
    text_encoder_dims=(768, 4096),  # CLIP-L (pooled), T5-XXL (sequence)
    text_encoder_classes=("CLIPTextModel", "T5EncoderModel"),
    prompt_from_penultimate_layer=False,
    native_resolution=1024,
    pixel_multiple=16,
    default_base_model="black-forest-labs/FLUX.1-dev",
    default_refiner_model=None,
    txt2img_pipeline="FluxPipeline",
    img2img_pipeline="FluxImg2ImgPipeline",
    inpaint_pipeline="FluxInpaintPipeline",
    base_time_ids=None,
    refiner_time_ids=None,
    pti_keys=(),  # the trigger word stays text: Flux's T5 reads new words well
    embedding_keys=(),
    # BFL / kohya names ComfyUI and Forge load (`lora_unet_double_blocks_0_img_attn_qkv`).
    kohya_unet_prefix="lora_unet",
    kohya_text_encoder_prefixes=("lora_te1", "lora_te2"),
    kohya_layout="bfl",
    denoiser="transformer",
    denoiser_class="FluxTransformer2DModel",
    objective="flow_matching",
    tokenizer_classes=("CLIPTokenizer", "T5TokenizerFast"),
    max_sequence_length=512,  # FLUX.1-dev's (schnell was distilled at 256)
    negative_prompt=False,
    named_schedulers=False,
    img2img_takes_size=True,
    lora_target_modules=FLUX_LORA_TARGETS,
    container="flux",
)

FAMILIES = {family.name: family for family in (SDXL, SD15, FLUX)}


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
    if _read_json(folder / FLUX.denoiser / "config.json").get("_class_name") == FLUX.denoiser_class:
        return FLUX
    unet = _read_json(folder / "unet" / "config.json")
    if unet:
        return SDXL if unet.get("addition_embed_type") == "text_time" else SD15
    raise UnknownFamilyError(
        f"{folder} is not a model of a supported family ({', '.join(FAMILIES)}): its "
        f"model_index.json names pipeline {pipeline_class!r} and it has no unet/config.json."
    )


# Tensor-name prefixes that tell an original (single-file) checkpoint's family: SDXL's and
# SD 1.5's text encoders, BFL's Flux transformer (alone, or under ComfyUI's prefix).
SINGLE_FILE_PREFIXES = {
    "conditioner.embedders.": SDXL,
    "cond_stage_model.": SD15,
    "double_blocks.": FLUX,
    "model.diffusion_model.double_blocks.": FLUX,
}


def _single_file_family(checkpoint: Path) -> ModelFamily:
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as tensors:
        names = list(tensors.keys())
    for prefix, family in SINGLE_FILE_PREFIXES.items():
        if any(name.startswith(prefix) for name in names):
            return family
    raise UnknownFamilyError(
        f"{checkpoint} is not a checkpoint of a supported family ({', '.join(FAMILIES)}): "
        f"no tensor names start with {' or '.join(SINGLE_FILE_PREFIXES)}."
    )


# Tensor-name fragments that only one family's trained weights have (LoRAs in the diffusers,
# kohya or Replicate layouts, full UNets): SDXL's second text encoder, its added embedding and
# its deeper transformer blocks; SD 1.5's lone text encoder (kohya `lora_te_`) and the attention
# of its first down block (SDXL's first down block has none); Flux's transformer blocks in the
# diffusers and the BFL / kohya names.
WEIGHT_NAME_MARKERS = {
    SDXL: (
        "text_encoder_2.",
        "lora_te2_",
        "add_embedding.",
        "transformer_blocks.1.",
        "transformer_blocks_1_",
    ),
    SD15: (
        "lora_te_",
        "down_blocks.0.attentions.",
        "down_blocks_0_attentions_",
        "input_blocks_1_1_",
    ),
    FLUX: (
        "single_transformer_blocks.",
        "transformer.transformer_blocks.",
        "double_blocks.",
        "double_blocks_",
        "single_blocks_",
    ),
}


def family_from_weight_names(names) -> ModelFamily | None:
    """The family trained weights were made for, told from the tensor names of one file (for
    weights that do not record it); None when the names do not tell. A textual-inversion file
    tells by holding exactly the family's keys (one table per text encoder)."""
    names = set(names)
    for family in FAMILIES.values():
        if family.pti_keys and names in (set(family.pti_keys), set(family.embedding_keys)):
            return family
    found = {
        family
        for family, markers in WEIGHT_NAME_MARKERS.items()
        if any(marker in name for name in names for marker in markers)
    }
    if FLUX in found:  # Flux's block names also contain SDXL's `transformer_blocks.1.`
        return FLUX
    return found.pop() if len(found) == 1 else None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
