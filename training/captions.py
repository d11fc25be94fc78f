"""Captions at training time: the trigger word becomes the new tokens, and the per-step
augmentations (caption dropout, shuffled comma-separated parts)."""

from __future__ import annotations

import random
import re

from training.config import TrainingConfig


def substitute_trigger(text: str, token_map: dict[str, str]) -> str:
    """Replace each trigger as a whole word ("TOK" but not "TOKEN") by its token string.
    TODO(merge): replace by preprocess.captions.substitute_trigger."""
    for trigger, tokens in token_map.items():
        text = re.sub(rf"(?<!\w){re.escape(trigger)}(?!\w)", tokens, text)
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
