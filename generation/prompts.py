"""Trigger-token substitution in prompts."""

from __future__ import annotations

import re


# TODO(merge): replace with preprocess.captions.substitute_trigger once that lands.
def substitute_tokens(prompt: str, token_map: dict[str, str]) -> str:
    """Replace each trigger word (e.g. `TOK`) by its trained tokens (`<s0><s1>`), only where
    it stands as a whole word and with its exact case: `tokyo` and `Tok` stay as they are."""
    for trigger, tokens in token_map.items():
        prompt = re.sub(rf"(?<!\w){re.escape(trigger)}(?!\w)", lambda _, t=tokens: t, prompt)
    return prompt
