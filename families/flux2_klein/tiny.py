"""The embedded tiny FLUX.2 [klein] (`BASE_MODEL=tiny-flux2-klein`): the real classes at small
sizes. A Qwen3 causal LM with a locally built byte-level BPE tokenizer (Qwen's special tokens
and a chat template of Qwen3's form), a transformer of double- and single-stream blocks
without guidance embedding (klein is not guidance-distilled), a VAE with klein's batch-norm
latent statistics (seeded, so normalising the latents matters), klein's flow-matching
scheduler. Every builder seeds its own generator: two builds are byte-identical."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Transformer2DModel,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3ForCausalLM

from families.flux1.tiny import FLUX_SCHEDULER
from families.tiny_parts import VOCAB_SIZE, clip_vocabulary

# FLUX.2-klein-4B's scheduler config is FLUX.1-dev's (dynamic shifting: the pipelines pass
# a shift `mu` computed from the image's token count).
KLEIN_SCHEDULER = FLUX_SCHEDULER
QWEN_HIDDEN = 16
# The pipelines read hidden states 9, 18 and 27 (Qwen3-4B has 36 layers): 28 keeps 27 an
# intermediate layer, as it is in the real model.
QWEN_LAYERS = 28
LATENT_CHANNELS = 8  # FLUX.2's VAE: 32; patchified 2x2 into 4x as many transformer channels
# Qwen's special tokens, and the two its chat template writes for a reply without thinking.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
THINK_TOKENS = ("<think>", "</think>")
# Qwen3's chat template, reduced to what the pipelines render: user messages, the assistant
# turn, and the empty thinking block `enable_thinking=False` asks for.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def build_tiny_klein() -> Flux2KleinPipeline:
    """FLUX.2 [klein] 4B's layout: the step-distilled variant (`is_distilled`), as the
    default base model is."""
    tokenizer = build_qwen_tokenizer()
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**KLEIN_SCHEDULER),
        vae=build_klein_vae(),
        text_encoder=build_qwen_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        transformer=build_klein_transformer(),
        is_distilled=True,
    )


def build_klein_transformer() -> Flux2Transformer2DModel:
    """Two double-stream and two single-stream blocks (klein 4B: 5 and 20)."""
    torch.manual_seed(21)
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * QWEN_HIDDEN,  # three Qwen3 layers side by side
        timestep_guidance_channels=32,
        mlp_ratio=3.0,
        axes_dims_rope=(4, 4, 4, 4),  # sums to attention_head_dim; 4-D positions (t, h, w, l)
        rope_theta=2000,
        guidance_embeds=False,
    )


def build_klein_vae() -> AutoencoderKLFlux2:
    """An 8x VAE whose batch norm holds seeded, non-trivial latent statistics (a fresh one
    holds mean 0 and variance 1, which would hide a missing normalisation)."""
    torch.manual_seed(23)
    vae = AutoencoderKLFlux2(
        block_out_channels=(32, 32, 64, 64),
        latent_channels=LATENT_CHANNELS,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    features = vae.bn.num_features
    vae.bn.running_mean.copy_(0.5 * torch.randn(features))
    vae.bn.running_var.copy_(0.25 + 2 * torch.rand(features))
    return vae


def build_qwen_encoder(vocab_size: int) -> Qwen3ForCausalLM:
    torch.manual_seed(22)
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=QWEN_HIDDEN,
        intermediate_size=2 * QWEN_HIDDEN,
        num_hidden_layers=QWEN_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=1024,  # the pipelines pad prompts to 512 tokens
        tie_word_embeddings=True,  # as Qwen3-4B
        eos_token_id=vocab_size - len(SPECIAL_TOKENS) - len(THINK_TOKENS) + 2,  # <|im_end|>
        pad_token_id=vocab_size - len(SPECIAL_TOKENS) - len(THINK_TOKENS),  # <|endoftext|>
    )
    return Qwen3ForCausalLM(config)


def build_qwen_tokenizer() -> Qwen2TokenizerFast:
    """A byte-level BPE in Qwen's form (GPT-2's byte alphabet, `Ġ` marking a space): the 256
    byte symbols, then merges that spell whole words of the tiny CLIP vocabulary with and
    without a leading space, then Qwen's special and thinking tokens (so any text tokenizes,
    a known word into one token)."""
    vocab = {symbol: index for index, symbol in enumerate(sorted(ByteLevel.alphabet()))}
    merges: list[tuple[str, str]] = []
    clip_tokens, _ = clip_vocabulary(VOCAB_SIZE)
    words = [t.removesuffix("</w>") for t in clip_tokens if t.endswith("</w>")]
    room = VOCAB_SIZE - len(SPECIAL_TOKENS) - len(THINK_TOKENS)
    for word in dict.fromkeys(w for w in words if w.isalpha() and len(w) > 1):
        for spelled in ("Ġ" + word, word):
            _add_merges(spelled, vocab, merges, room)
    for token in (*SPECIAL_TOKENS, *THINK_TOKENS):
        vocab[token] = len(vocab)
    tokenizer = Qwen2TokenizerFast(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        chat_template=CHAT_TEMPLATE,
        model_max_length=131072,
    )
    tokenizer.add_tokens(list(THINK_TOKENS))  # whole tokens, not special (as in Qwen3)
    return tokenizer


def _add_merges(spelled: str, vocab: dict, merges: list, room: int) -> None:
    """Merges joining `spelled` left to right into one token, while the vocabulary has room."""
    built = spelled[0]
    for character in spelled[1:]:
        joined = built + character
        if joined not in vocab:
            if len(vocab) >= room:
                return
            vocab[joined] = len(vocab)
            merges.append((built, character))
        built = joined
