"""Trigger words and the tokens trained for them: the rules both halves share.

The preprocessing keeps the trigger word (`TOK`) as plain text in captions; the trainer and
the predictor replace it, as a whole word with its exact case, by the trained tokens
(`<s0><s1>`), whose vectors `TokenEmbeddingsHandler` installs into the text encoders.

Replicate's published recipe for using SDXL fine-tunes in plain diffusers does

    from dataset_and_utils import TokenEmbeddingsHandler
    handler = TokenEmbeddingsHandler([pipe.text_encoder, pipe.text_encoder_2],
                                     [pipe.tokenizer, pipe.tokenizer_2])
    handler.load_embeddings("embeddings.pti")

and then prompts with `<s0><s1>`; that usage works unchanged with this project's bundles.
`embeddings.pti` is a safetensors file with one [n_tokens, hidden] tensor per text encoder
under `text_encoders_0`, `text_encoders_1` (an SD 1.5 bundle: `text_encoders_0` only, loaded
with `TokenEmbeddingsHandler([pipe.text_encoder], [pipe.tokenizer])`). A `None` encoder (the
SDXL refiner has no first text encoder) is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from families import SDXL


def _trigger_pattern(trigger: str, ignore_case: bool) -> re.Pattern:
    # Whole word: no letter, digit or underscore directly before or after.
    return re.compile(
        rf"(?<!\w){re.escape(trigger)}(?!\w)", flags=re.IGNORECASE if ignore_case else 0
    )


def substitute_trigger(text: str, trigger: str, replacement: str, ignore_case: bool = False) -> str:
    """Replace whole-word occurrences of `trigger` in `text` by `replacement`, leaving every
    other character (and its case) as it was: with trigger `TOK`, "TOK's hat in Tokyo" becomes
    "<s0><s1>'s hat in Tokyo". Case-sensitive unless `ignore_case`."""
    if not trigger:
        return text
    return _trigger_pattern(trigger, ignore_case).sub(lambda _: replacement, text)


def contains_trigger(text: str, trigger: str) -> bool:
    return bool(_trigger_pattern(trigger, ignore_case=False).search(text))


def apply_token_map(text: str, token_map: dict[str, str]) -> str:
    """Each trigger of `token_map` (e.g. {"TOK": "<s0><s1>"}) replaced by its tokens."""
    for trigger, tokens in token_map.items():
        text = substitute_trigger(text, trigger, tokens)
    return text


# A trigger word is one word a prompt names the subject by; longer ones are not words.
MAX_TRIGGER_LENGTH = 64
INSERTED_TOKEN = re.compile(r"<s\d+>")


def trigger_problems(trigger: str, name: str) -> list[str]:
    """What is wrong with `trigger` as the input `name` (the trigger word), if anything."""
    if not trigger.strip() or any(c.isspace() for c in trigger):
        return [f"{name}={trigger[:80]!r}: use one word without spaces, e.g. TOK."]
    if INSERTED_TOKEN.search(trigger):
        return [
            f"{name}={trigger!r}: <s0>, <s1>, ... are the tokens training inserts for the "
            "trigger; pick another word, e.g. TOK."
        ]
    return []


def token_names(count: int) -> list[str]:
    """The inserted tokens, `<s0>`, `<s1>`, ...: the names bundles and prompts use."""
    return [f"<s{i}>" for i in range(count)]


class TokenEmbeddingsHandler:
    def __init__(self, text_encoders: Sequence, tokenizers: Sequence, pti_keys=SDXL.pti_keys):
        self.text_encoders = list(text_encoders)
        self.tokenizers = list(tokenizers)
        self.pti_keys = pti_keys
        self.tokens: list[str] = []
        self.train_ids: list[int] = []
        self._frozen_rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def pairs(self):
        """(index, text encoder, tokenizer) for each encoder that is present."""
        pairs = zip(self.text_encoders, self.tokenizers, strict=True)
        for index, (encoder, tokenizer) in enumerate(pairs):
            if encoder is not None and tokenizer is not None:
                yield index, encoder, tokenizer

    # --- training -------------------------------------------------------------------------

    def initialize_new_tokens(
        self, count: int, generator: torch.Generator | None = None, init_word: str | None = None
    ):
        """Add `count` new tokens to every tokenizer and initialise their embedding rows with
        random vectors at the scale (std) of the existing vocabulary, or each with the mean
        embedding of `init_word`'s tokens (as diffusers' textual inversion's initializer)."""
        self.tokens = token_names(count)
        for index, encoder, tokenizer in self.pairs():
            word_ids = tokenizer(init_word, add_special_tokens=False).input_ids if init_word else []
            self.train_ids = self._install_tokens(encoder, tokenizer)
            table = self._table(encoder)
            if word_ids:
                table[self.train_ids] = table[word_ids].mean(0)
            else:
                std = table.std().item()
                # Drawn on the CPU so a seed gives the same tokens on every device.
                noise = torch.randn(count, table.shape[1], generator=generator)
                table[self.train_ids] = (noise * std).to(table.device, table.dtype)
            keep = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)
            keep[self.train_ids] = False
            self._frozen_rows[index] = (keep, table[keep].clone())

    def train_tables(self) -> None:
        """Make the embedding tables trainable in fp32 (small updates do not vanish in bf16),
        handing their rows on in the encoder's own dtype: a bf16 encoder's layers take bf16
        (an fp32 row would reach its layer norms as another dtype than their weights)."""
        for _, encoder, _ in self.pairs():
            dtype = encoder.dtype  # before the table, its first parameter, turns fp32
            table = encoder.get_input_embeddings().to(torch.float32).requires_grad_(True)
            table.register_forward_hook(lambda module, args, rows, dtype=dtype: rows.to(dtype))

    def retract_embeddings(self) -> None:
        """Put back every row that is not a trained token (call after each optimizer step: the
        embedding table's gradient touches the whole table under weight decay/momentum)."""
        for index, encoder, _ in self.pairs():
            keep, original = self._frozen_rows[index]
            self._table(encoder)[keep] = original.to(self._table(encoder).dtype)

    def token_vectors(self) -> dict[int, torch.Tensor]:
        """The trained tokens' vectors, per text-encoder index, as float32 on the CPU."""
        return {
            index: self._table(encoder)[self.train_ids].detach().float().cpu().clone()
            for index, encoder, _ in self.pairs()
        }

    def save_embeddings(self, file_path) -> None:
        vectors = self.token_vectors()
        save_file({self.pti_keys[i]: v.contiguous() for i, v in vectors.items()}, str(file_path))

    # --- inference --------------------------------------------------------------------------

    def load_embeddings(self, file_path) -> None:
        """Install the tokens of an `embeddings.pti` file into the tokenizers and encoders."""
        with safe_open(str(file_path), framework="pt", device="cpu") as tensors:
            vectors = {i: tensors.get_tensor(self.pti_keys[i]) for i, _, _ in self.pairs()}
        self.load_vectors(vectors)

    def load_vectors(self, vectors: dict[int, torch.Tensor]) -> None:
        counts = {v.shape[0] for v in vectors.values()}
        if len(counts) != 1:
            raise ValueError(f"Token embeddings disagree on the number of tokens: {counts}.")
        self.tokens = token_names(counts.pop())
        for index, encoder, tokenizer in self.pairs():
            table = self._table(encoder)
            if vectors[index].shape[1] != table.shape[1]:
                raise ValueError(
                    f"Token embeddings for text encoder {index} have width "
                    f"{vectors[index].shape[1]}, but the encoder's is {table.shape[1]}: "
                    "they were trained for another base model."
                )
            self.train_ids = self._install_tokens(encoder, tokenizer)
            self._table(encoder)[self.train_ids] = vectors[index].to(table.device, table.dtype)

    # --- internals --------------------------------------------------------------------------

    def _install_tokens(self, encoder, tokenizer) -> list[int]:
        tokenizer.add_tokens(self.tokens, special_tokens=True)
        if encoder.get_input_embeddings().weight.shape[0] < len(tokenizer):
            # The new rows are overwritten right after: skip transformers' mean/covariance init.
            encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        return tokenizer.convert_tokens_to_ids(self.tokens)

    @staticmethod
    def _table(encoder) -> torch.Tensor:
        return encoder.get_input_embeddings().weight.data
