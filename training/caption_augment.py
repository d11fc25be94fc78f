"""Captions at training time: the per-step augmentations (caption dropout, shuffled
comma-separated parts)."""

from __future__ import annotations

import random

from training.config import TrainingConfig


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
