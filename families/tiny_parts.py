"""Small models of the real components' classes, shared by the families' tiny test models:
CLIP text encoders and tokenizers with CLIP's real vocabulary (its first entries), and an 8x
VAE. Every builder seeds its own generator, so two builds are byte-identical."""

from __future__ import annotations

import gzip
import importlib.util
import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

VOCAB_SIZE = 1000  # the first ~1000 CLIP BPE tokens keep their real ids
MAX_TOKENS = 77
TEXT_ENCODER_DIMS = (32, 64)  # deliberately different, so a swapped concatenation fails
PROJECTION_DIM = 32
SAMPLE_SIZE = 8  # latent size: pipelines default to 64x64 images


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
