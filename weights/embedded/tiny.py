"""Tiny random-initialised SDXL, SD 1.5 and FLUX.1 models with the real architectures.

Real weights cannot be downloaded where tests and the demo run, so the project builds
small models of the same classes and layouts and saves them as ordinary diffusers folders,
loaded by exactly the code that loads the real models:
- SDXL: two CLIP text encoders of different widths, a text_time UNet, an 8x VAE, the SDXL
  Euler scheduler, and a refiner;
- SD 1.5: one CLIP text encoder, a UNet without micro-conditioning, an 8x VAE, SD 1.5's PNDM
  scheduler, no safety checker;
- FLUX.1: a CLIP text encoder (pooled) and a T5 encoder with a locally built SentencePiece-style
  vocabulary, a transformer of double- and single-stream blocks with guidance embedding, a
  16-channel 8x VAE with Flux's scaling and shift, FLUX.1-dev's flow-matching scheduler.

Every builder seeds its own generator, so two builds give byte-identical safetensors.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import string
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

# Bump when a builder changes, so cached folders from an older build are not reused.
BUILD_VERSION = 1
VOCAB_SIZE = 1000  # the first ~1000 CLIP BPE tokens keep their real ids
MAX_TOKENS = 77
TIME_EMBED_DIM = 8
TEXT_ENCODER_DIMS = (32, 64)  # deliberately different, so a swapped concatenation fails
PROJECTION_DIM = 32
SAMPLE_SIZE = 8  # latent size: pipelines default to 64x64 images
ROLES = {"sdxl": ("base", "refiner"), "sd15": ("base",), "flux": ("base",)}  # by family

# SDXL base's scheduler settings (stabilityai/stable-diffusion-xl-base-1.0).
SDXL_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    interpolation_type="linear",
    timestep_spacing="leading",
    steps_offset=1,
    use_karras_sigmas=False,
)

# SD 1.5's scheduler settings (stable-diffusion-v1-5/stable-diffusion-v1-5; its config's
# clip_sample=False is a DDIM setting PNDM does not take).
SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
)
SDXL_VAE_SCALING = 0.13025
SD15_VAE_SCALING = 0.18215
# FLUX.1-dev's VAE latent normalisation and scheduler (black-forest-labs/FLUX.1-dev).
FLUX_VAE_SCALING, FLUX_VAE_SHIFT = 0.3611, 0.1159
FLUX_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
FLUX_T5_DIM = 32
FLUX_MAX_SEQUENCE_LENGTH = 512  # as FLUX.1-dev: the pipelines and the trainer pad to it


def ensure_tiny_model(role: str, cache_dir: Path, family: str = "sdxl") -> Path:
    """Return the folder of the tiny `family` `role` model, building it on first use."""
    if role not in ROLES[family]:
        raise ValueError(
            f"There is no tiny {family} {role!r} model (the {family} family has: "
            f"{', '.join(ROLES[family])})."
        )
    target = Path(cache_dir) / f"tiny-{family}-{role}-v{BUILD_VERSION}"
    builders = {
        "sdxl": lambda: build_tiny_pipeline(role),
        "sd15": build_tiny_sd15_pipeline,
        "flux": build_tiny_flux_pipeline,
    }
    builder = builders[family]

    def save(folder: Path) -> None:
        builder().save_pretrained(folder, safe_serialization=True)

    return build_folder_once(target, "model_index.json", save)


def build_folder_once(target: Path, marker: str, save: Callable[[Path], None]) -> Path:
    """Return `target`, first filling it with `save(folder)` unless it already holds `marker`.
    Built beside the target and renamed, so a crash never leaves a half-written model."""
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        save(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / marker).exists():  # not a concurrent builder's win
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tiny_pipeline(role: str):
    tokenizer_2 = build_tokenizer(pad_token="!")  # SDXL's second tokenizer pads with "!"
    text_encoder_2 = build_text_encoder(1, with_projection=True)
    vae = build_vae(SDXL_VAE_SCALING)
    scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER)
    if role == "base":
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=build_text_encoder(0, with_projection=False),
            text_encoder_2=text_encoder_2,
            tokenizer=build_tokenizer(pad_token="<|endoftext|>"),
            tokenizer_2=tokenizer_2,
            unet=build_base_unet(),
            scheduler=scheduler,
        )
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=tokenizer_2,
        unet=build_refiner_unet(),
        scheduler=scheduler,
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def build_tiny_sd15_pipeline() -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=build_vae(SD15_VAE_SCALING),
        text_encoder=build_text_encoder(0, with_projection=False),
        tokenizer=build_tokenizer(pad_token="<|endoftext|>"),
        unet=build_sd15_unet(),
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_flux_pipeline() -> FluxPipeline:
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=build_vae(
            FLUX_VAE_SCALING, latent_channels=16, shift_factor=FLUX_VAE_SHIFT, quant_conv=False
        ),
        text_encoder=build_text_encoder(0, with_projection=False),
        tokenizer=build_tokenizer(pad_token="<|endoftext|>"),
        text_encoder_2=build_t5_encoder(),
        tokenizer_2=build_t5_tokenizer(),
        transformer=build_flux_transformer(),
    )


def build_flux_transformer() -> FluxTransformer2DModel:
    """Two double-stream and two single-stream blocks (FLUX.1: 19 and 38) with guidance."""
    torch.manual_seed(5)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels packed 2x2
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=FLUX_T5_DIM,
        pooled_projection_dim=TEXT_ENCODER_DIMS[0],  # CLIP-L's pooled output
        guidance_embeds=True,  # FLUX.1-dev's distilled guidance
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )


def build_t5_encoder() -> T5EncoderModel:
    torch.manual_seed(12)
    config = T5Config(
        vocab_size=VOCAB_SIZE,
        d_model=FLUX_T5_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as FLUX.1's T5-XXL
        is_encoder_decoder=False,
        use_cache=False,
    )
    return T5EncoderModel(config)


def build_t5_tokenizer() -> T5TokenizerFast:
    """A unigram vocabulary in T5's SentencePiece form (`▁` marks a word start): T5's three
    special tokens, then the whole words of the tiny CLIP vocabulary and single printable
    characters (so any ASCII prompt tokenizes without unknowns)."""
    clip_tokens, _ = clip_vocabulary(VOCAB_SIZE)
    words = [t.removesuffix("</w>") for t in clip_tokens if t.endswith("</w>")]
    words = list(dict.fromkeys(w for w in words if w.isalnum()))
    characters = sorted(set(string.ascii_letters + string.digits + string.punctuation))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -1.0 - 1 / len(w)) for w in words]
    pieces += [(c, -8.0) for c in characters]
    pieces = pieces[:VOCAB_SIZE]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=FLUX_MAX_SEQUENCE_LENGTH)


def build_sd15_unet() -> UNet2DConditionModel:
    """SD 1.5's layout (three cross-attention levels, then a plain one; no text_time)."""
    torch.manual_seed(4)
    return UNet2DConditionModel(
        sample_size=SAMPLE_SIZE,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        attention_head_dim=4,
        norm_num_groups=8,
        cross_attention_dim=TEXT_ENCODER_DIMS[0],
    )


def build_base_unet() -> UNet2DConditionModel:
    torch.manual_seed(1)
    return UNet2DConditionModel(
        sample_size=SAMPLE_SIZE,
        block_out_channels=(32, 32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 2, 4),
        norm_num_groups=8,
        use_linear_projection=True,
        cross_attention_dim=sum(TEXT_ENCODER_DIMS),
        addition_embed_type="text_time",
        addition_embed_type_num_heads=8,
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + PROJECTION_DIM,
    )


def build_refiner_unet() -> UNet2DConditionModel:
    torch.manual_seed(2)
    return UNet2DConditionModel(
        sample_size=SAMPLE_SIZE,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        down_block_types=(
            "DownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 1, 1),
        attention_head_dim=(2, 2, 4, 4),
        norm_num_groups=8,
        use_linear_projection=True,
        cross_attention_dim=TEXT_ENCODER_DIMS[1],  # the refiner only has the second encoder
        addition_embed_type="text_time",
        addition_embed_type_num_heads=8,
        addition_time_embed_dim=TIME_EMBED_DIM,
        # 5 time ids: original size, crop top-left, aesthetic score.
        projection_class_embeddings_input_dim=5 * TIME_EMBED_DIM + PROJECTION_DIM,
    )


def build_vae(
    scaling_factor: float,
    block_out_channels: tuple[int, ...] = (32, 32, 64, 64),
    latent_channels: int = 4,
    shift_factor: float | None = None,
    quant_conv: bool = True,
) -> AutoencoderKL:
    torch.manual_seed(3)
    return AutoencoderKL(
        block_out_channels=block_out_channels,  # four levels: 8x downsampling as in SDXL
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=SAMPLE_SIZE * 8,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        force_upcast=True,
        use_quant_conv=quant_conv,  # Flux's VAE has neither quant conv
        use_post_quant_conv=quant_conv,
    )


def build_text_encoder(index: int, with_projection: bool):
    torch.manual_seed(10 + index)
    hidden = TEXT_ENCODER_DIMS[index]
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=3,  # SDXL reads the penultimate layer
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=PROJECTION_DIM,
        hidden_act="quick_gelu" if index == 0 else "gelu",
        bos_token_id=VOCAB_SIZE - 2,
        eos_token_id=VOCAB_SIZE - 1,
        pad_token_id=0 if index == 1 else VOCAB_SIZE - 1,
    )
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(config)


def build_tokenizer(pad_token: str) -> CLIPTokenizer:
    vocab, merges = clip_vocabulary(VOCAB_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp, "vocab.json"), Path(tmp, "merges.txt")
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
        # local_files_only always: the saved config records it, and HF_HUB_OFFLINE would
        # otherwise make the build's bytes depend on the environment.
        tokenizer = CLIPTokenizer.from_pretrained(
            tmp, pad_token=pad_token, model_max_length=MAX_TOKENS, local_files_only=True
        )
    return tokenizer


def clip_vocabulary(size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The first `size` entries of CLIP's BPE vocabulary (ids as in real CLIP), plus the
    start/end tokens at the last two ids."""
    lines = gzip.open(clip_bpe_file(), "rt", encoding="utf-8").read().split("\n")
    byte_symbols = list(_bytes_to_unicode().values())
    n_merges = size - 2 * len(byte_symbols) - 2
    merges = [tuple(line.split()) for line in lines[1 : 1 + n_merges]]
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def clip_bpe_file() -> Path:
    """CLIP's BPE merges ship inside the `clip-anytorch` wheel; read the file without importing
    the package (it imports torchvision)."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("CLIP's vocabulary is missing: `make setup` installs clip-anytorch.")
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))
