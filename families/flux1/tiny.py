"""The embedded tiny FLUX.1 (`BASE_MODEL=tiny-flux`): a CLIP text encoder (pooled) and a T5
encoder with a locally built SentencePiece-style vocabulary, a transformer of double- and
single-stream blocks with guidance embedding, a 16-channel 8x VAE with Flux's scaling and
shift, FLUX.1-dev's flow-matching scheduler."""

from __future__ import annotations

import string

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import T5Config, T5EncoderModel, T5TokenizerFast

from families.tiny_parts import (
    TEXT_ENCODER_DIMS,
    VOCAB_SIZE,
    build_text_encoder,
    build_tokenizer,
    build_vae,
    clip_vocabulary,
)

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


def build_tiny_flux() -> FluxPipeline:
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
