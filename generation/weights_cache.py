"""Trained weights, from a reference to tensors in memory, and a bounded cache of them.

A reference (what `COG_WEIGHTS`, `replicate_weights`, `extra_lora` or `loras` name: a URL, data
URI or local path) is fetched by the model store and described as `TrainedWeights`, then read
once into `PreparedWeights`: the LoRA in canonical form, a full fine-tune's UNet tensors, the
token vectors and token map. A download that fails that reading (or does not fit the models)
never becomes a store entry. Recently used ones stay in memory (bounded by bytes), so switching
back to them reads nothing from disk.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from families import ModelFamily
from generation.layer_names import LayerNames
from generation.lora import PreparedLora, read_lora
from weights.runtime import Runtime
from weights.store import ModelStore
from weights.trained_files import TrainedWeights, UnrecognisedWeightsError

# About twenty rank-32 SDXL LoRAs (on the GPU when there is one). A full fine-tune of SDXL
# (5 GB in fp16) is larger: it is kept only while it is the one in use.
DEFAULT_CACHE_BYTES = 2 << 30


@dataclass(frozen=True, eq=False)  # compared by identity: the cache hands out one object
class PreparedWeights:
    source: str
    lora: PreparedLora | None
    unet: dict[str, torch.Tensor] | None  # full fine-tune: UNet parameter name -> tensor
    token_vectors: dict[int, torch.Tensor] | None  # text-encoder index -> [n_tokens, width]
    token_map: dict[str, str]  # e.g. {"TOK": "<s0><s1>"}
    # The words prompts name the trained subject by: the token map's, else the trigger word
    # the training recorded (FLUX.1 trains it as a plain word).
    trigger_words: tuple[str, ...] = ()

    @property
    def nbytes(self) -> int:
        lora = self.lora.nbytes if self.lora else 0
        unet = sum(t.nbytes for t in self.unet.values()) if self.unet else 0
        return lora + unet


def prepare_weights(
    weights: TrainedWeights, runtime: Runtime, family: ModelFamily, layers: LayerNames
) -> PreparedWeights:
    """Read every tensor a bundle needs into memory, checking the files on the way (first of
    all that they were made for the base model's `family`): LoRA tensors on the runtime's
    device (a switch uses them as they are), a full fine-tune's UNet on the CPU (copied in).
    `layers`: the names LoRA files may give the models' layers."""
    weights.check_family(family)
    lora = None
    if weights.lora:
        lora = read_lora(weights.lora, runtime, family, layers, weights.source)
    unet = _read_tensors(weights.unet, weights.source, runtime.dtype) if weights.unet else None
    vectors = None
    if weights.embeddings_pti:
        pti = _read_tensors(weights.embeddings_pti, weights.source, torch.float32)
        missing = [key for key in family.pti_keys if key not in pti]
        if missing:
            raise UnrecognisedWeightsError(
                f"{weights.source}: {weights.embeddings_pti.name} lacks {', '.join(missing)}."
            )
        vectors = {index: pti[key] for index, key in enumerate(family.pti_keys)}
    token_map = dict(weights.token_map or {})
    if token_map and vectors is None:
        raise UnrecognisedWeightsError(
            f"{weights.source} names trigger tokens {sorted(token_map)} but has no "
            "embeddings.pti holding their vectors."
        )
    triggers = tuple(token_map) or ((weights.trigger_word,) if weights.trigger_word else ())
    return PreparedWeights(weights.source, lora, unet, vectors, token_map, triggers)


def _read_tensors(file: Path, source: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as error:
        raise UnrecognisedWeightsError(
            f"{source}: {file.name} is not a readable safetensors file ({error})."
        ) from None
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}


class WeightsCache:
    """Recently used `PreparedWeights`, least recently used dropped first, bounded in bytes
    (and, where a deployment gives one, in entries: a Ray Serve replica's LoRA count)."""

    def __init__(
        self,
        runtime: Runtime,
        store: ModelStore,
        family: ModelFamily,
        layers: LayerNames,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        fits: Callable[[PreparedWeights], None] | None = None,
        max_entries: int | None = None,
    ):
        self.runtime = runtime
        self.family = family  # the base model's: weights made for another are refused
        self.layers = layers  # the names LoRA files may give the models' layers
        self.store = store  # fetches URLs / data URIs / archives to disk (and caches them there)
        self.max_bytes = max_bytes
        self.fits = fits  # raises for weights that do not fit the models they are meant for
        self.max_entries = max_entries  # None: bytes alone bound it
        self.loads = 0  # references read into memory (misses), for the fleet's counts
        self._entries: OrderedDict[str, PreparedWeights] = OrderedDict()

    def get(self, reference: str | os.PathLike) -> PreparedWeights:
        reference = str(reference)
        if reference in self._entries:
            self._entries.move_to_end(reference)
        else:
            self._entries[reference] = self.store.trained_weights(reference, self._prepare)
            self.loads += 1
        prepared = self._entries[reference]
        # Drop the least recently used; the one just asked for stays even if over budget.
        while len(self._entries) > 1 and self._over_budget():
            self._entries.popitem(last=False)
        return prepared

    def discard(self, reference: str, entry: PreparedWeights | None = None) -> None:
        """Drop `reference` (only while it is `entry`, when one is given: a newer load of
        the same reference stays)."""
        if entry is None or self._entries.get(reference) is entry:
            self._entries.pop(reference, None)

    def _over_budget(self) -> bool:
        too_many = self.max_entries is not None and len(self._entries) > self.max_entries
        return too_many or self.nbytes > self.max_bytes

    def _prepare(self, weights: TrainedWeights) -> PreparedWeights:
        prepared = prepare_weights(weights, self.runtime, self.family, self.layers)
        if self.fits is not None:
            self.fits(prepared)
        return prepared

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def __contains__(self, reference: str | os.PathLike) -> bool:
        return str(reference) in self._entries
