"""FLUX.1-dev's real architecture (black-forest-labs/FLUX.1-dev's configs) with random weights,
built on the meta device and materialised where it runs, saved as a diffusers folder: the
benchmarks' way to measure the real sizes without the gated download."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.sdxl_architecture import CLIP_VOCABULARY, SDXL_TEXT_ENCODERS, materialise

# transformer/config.json
FLUX_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
# text_encoder_2/config.json (T5 v1.1 XXL, encoder only)
FLUX_T5 = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    feed_forward_proj="gated-gelu",
    is_encoder_decoder=False,
    use_cache=False,
)
# vae/config.json
FLUX_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=16,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
    force_upcast=True,
)


def build_flux_transformer(device, dtype):
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX_TRANSFORMER)
    return materialise(transformer, device, dtype)


def save_flux_folder(folder: Path, device, dtype) -> Path:
    """A diffusers folder of FLUX.1-dev's architecture with random weights (the embedded tiny
    tokenizers: their ids are valid in the real vocabularies)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from families.flux1.tiny import FLUX_SCHEDULER, build_t5_tokenizer
    from families.tiny_parts import build_tokenizer

    with torch.device("meta"):
        clip = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=CLIP_VOCABULARY, max_position_embeddings=77, **SDXL_TEXT_ENCODERS[0]
            )
        )
        t5 = T5EncoderModel(T5Config(**FLUX_T5))
        vae = AutoencoderKL(**FLUX_VAE)
    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=materialise(vae, device, dtype),
        text_encoder=materialise(clip, device, dtype),
        tokenizer=build_tokenizer(pad_token="<|endoftext|>"),
        text_encoder_2=materialise(t5, device, dtype),
        tokenizer_2=build_t5_tokenizer(),
        transformer=build_flux_transformer(device, dtype),
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder
