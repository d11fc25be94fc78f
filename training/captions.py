"""Captions at training time: the trigger word becomes the new tokens, and the per-step
augmentations (caption dropout, shuffled comma-separated parts)."""

from __future__ import annotations

import random

from preprocess.captions import substitute_trigger
from training.config import TrainingConfig


def apply_token_map(text: str, token_map: dict[str, str]) -> str:
    """Each trigger of `token_map` (e.g. {"TOK": "<s0><s1>"}) replaced by its tokens."""
    for trigger, tokens in token_map.items():
        text = substitute_trigger(text, trigger, tokens)
    return text


def caption_for_step(caption: str, config: TrainingConfig, rng: random.Random) -> str:
    """The caption as this step sees it. Dropout (an empty caption) teaches the unconditional
    prediction that classifier-free guidance uses; shuffling keeps the first `keep_tokens`
    parts (where the trigger sits) in place."""
    if config.caption_dropout and rng.random() < config.caption_dropout:
        return ""
    if config.shuffle_tokens:
        parts = [part.strip() for part in caption.split(",") if part.strip()]
        kept, rest = parts[: config.keep_tokens], parts[config.keep_tokens :]
        rng.shuffle(rest)
        return ", ".join(kept + rest)
    return caption
