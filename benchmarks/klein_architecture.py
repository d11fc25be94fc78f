"""FLUX.2 [klein] 4B's real architecture (black-forest-labs/FLUX.2-klein-4B's configs) with
random weights, built on the meta device and materialised where it runs, saved as a diffusers
folder (see sdxl_architecture.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.sdxl_architecture import materialise

# transformer/config.json (diffusers' scripts/convert_flux2_to_diffusers.py, "klein-4b")
KLEIN_TRANSFORMER = dict(
    patch_size=1,
    in_channels=128,
    num_layers=5,
    num_single_layers=20,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=7680,  # three Qwen3-4B hidden states of 2560 side by side
    timestep_guidance_channels=256,
    mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32),
    rope_theta=2000,
    eps=1e-6,
    guidance_embeds=False,
)
# text_encoder/config.json (Qwen/Qwen3-4B)
QWEN3_4B = dict(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rope_theta=1000000,
    tie_word_embeddings=True,
)


def save_klein_folder(folder: Path, device, dtype) -> Path:
    """A diffusers folder of FLUX.2 [klein] 4B's architecture with random weights (the VAE's
    defaults are FLUX.2's; the embedded tiny tokenizer: its ids are valid in Qwen3's
    vocabulary)."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from families.flux2_klein.tiny import KLEIN_SCHEDULER, build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer()
    with torch.device("meta"):
        encoder = Qwen3ForCausalLM(
            Qwen3Config(
                **QWEN3_4B,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        vae = AutoencoderKLFlux2()
        transformer = Flux2Transformer2DModel(**KLEIN_TRANSFORMER)
    vae = materialise(vae, device, dtype)
    with torch.no_grad():  # batch-norm statistics a latent can be normalised by
        vae.bn.running_mean.zero_()
        vae.bn.running_var.fill_(1.0)
    pipeline = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**KLEIN_SCHEDULER),
        vae=vae,
        text_encoder=materialise(encoder, device, dtype),
        tokenizer=tokenizer,
        transformer=materialise(transformer, device, dtype),
        is_distilled=True,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return Path(folder)
