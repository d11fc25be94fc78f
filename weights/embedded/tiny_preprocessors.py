"""Tiny random-initialised BLIP captioner, CLIPSeg segmenter and Swin2SR upscaler.

The preprocessing models of the trainer cannot be downloaded where tests run, so, as each
family's `tiny.py` does for its models, the project builds small models of the same classes
(with their processors) and saves them as ordinary `from_pretrained` folders. The
preprocessing code then loads them exactly as it loads the real ones.

Every builder seeds its own generator, so two builds give identical weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
    BlipProcessor,
    CLIPSegConfig,
    CLIPSegForImageSegmentation,
    CLIPSegProcessor,
    Swin2SRConfig,
    Swin2SRForImageSuperResolution,
    Swin2SRImageProcessorPil,
    ViTImageProcessorPil,
)

from families.tiny_parts import MAX_TOKENS, VOCAB_SIZE, build_tokenizer, clip_vocabulary
from weights.embedded.tiny import build_folder_once

# Bump when a builder changes, so cached folders from an older build are not reused.
BUILD_VERSION = 1
KINDS = ("captioner", "segmenter", "upscaler")
IMAGE_SIZE = 64  # what the tiny captioner and segmenter see (real: 384 and 352)
BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BLIP_WORDS = 200  # whole words taken from CLIP's vocabulary for the tiny BLIP tokenizer


def ensure_tiny_preprocessor(kind: str, cache_dir: Path) -> Path:
    """Return the folder of the tiny `kind` model, building it on first use."""
    if kind not in KINDS:
        raise ValueError(f"Unknown tiny preprocessor {kind!r}: use one of {KINDS}.")
    target = Path(cache_dir) / f"tiny-{kind}-v{BUILD_VERSION}"

    def save(folder: Path) -> None:
        model, processor = BUILDERS[kind]()
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)

    return build_folder_once(target, "config.json", save)


def build_captioner() -> tuple[BlipForConditionalGeneration, BlipProcessor]:
    tokenizer = build_blip_tokenizer()
    vocab = tokenizer.get_vocab()
    config = BlipConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=16,
            initializer_range=0.02,  # BLIP's default (1e-10) would make captions ignore the image
        ),
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            encoder_hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            bos_token_id=vocab["[DEC]"],
            eos_token_id=vocab["[SEP]"],
            sep_token_id=vocab["[SEP]"],
            pad_token_id=vocab["[PAD]"],
            initializer_range=0.3,  # strong cross-attention, so each photo gets its own caption
        ),
        projection_dim=32,
        image_text_hidden_size=32,
    )
    torch.manual_seed(20)
    model = BlipForConditionalGeneration(config)
    image_processor = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return model, BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_blip_tokenizer() -> BertTokenizer:
    """A BERT word-piece tokenizer like BLIP's, whose words are CLIP's commonest whole words."""
    clip_tokens, _ = clip_vocabulary(VOCAB_SIZE)
    words = [
        t[:-4] for t in clip_tokens if t.endswith("</w>") and t[:-4].isascii() and t[:-4].isalpha()
    ]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = BERT_SPECIAL + letters + ["##" + c for c in letters]
    vocab += [w for w in dict.fromkeys(words) if w not in vocab][:BLIP_WORDS] + ["[DEC]"]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp, "vocab.txt")
        vocab_file.write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizer(str(vocab_file), bos_token="[DEC]", model_max_length=512)
    return tokenizer


def build_segmenter() -> tuple[CLIPSegForImageSegmentation, CLIPSegProcessor]:
    config = CLIPSegConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=VOCAB_SIZE - 2,
            eos_token_id=VOCAB_SIZE - 1,
            pad_token_id=VOCAB_SIZE - 1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=16,
        ),
        projection_dim=32,
        extract_layers=(0, 1, 2),
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    torch.manual_seed(21)
    model = CLIPSegForImageSegmentation(config)
    image_processor = ViTImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.485, 0.456, 0.406],  # CIDAS/clipseg-rd64-refined's normalisation
        image_std=[0.229, 0.224, 0.225],
    )
    tokenizer = build_tokenizer(pad_token="<|endoftext|>")
    return model, CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_upscaler() -> tuple[Swin2SRForImageSuperResolution, Swin2SRImageProcessorPil]:
    config = Swin2SRConfig(
        embed_dim=16,
        depths=(2,),
        num_heads=(2,),
        window_size=8,
        upscale=4,  # as the real realworld-sr-x4 model
        upsampler="pixelshuffledirect",  # the real x4 model uses nearest+conv; this is lighter
    )
    torch.manual_seed(22)
    return Swin2SRForImageSuperResolution(config), Swin2SRImageProcessorPil()


BUILDERS = {"captioner": build_captioner, "segmenter": build_segmenter, "upscaler": build_upscaler}
