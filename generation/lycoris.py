"""LoRA files in LyCORIS's layout (LoKr, LoHa, and LoRA or either of them with DoRA's
`dora_scale`), read into one change per layer.

A key is `<layer name>.<part>`, the layer named as generation/layer_names.py resolves it
(kohya, LyCORIS, SGM, BFL or diffusers paths) and the part one of PARTS. Each layer's parts
must make exactly one change; a key that does not (an unknown layer or part, or a part set
that is incomplete or mixes formats) refuses the whole file. Alpha is applied as LyCORIS and
ComfyUI apply it: alpha / rank, where the rank is a LoRA's or LoHa's inner size and, for LoKr,
that of its decomposed factor (w2's when both are; none decomposed: no scale). A file without
`.alpha` keys that carries a peft adapter config in its metadata (diffusers' writer) is scaled
as peft scales it: alpha / r.
"""

from __future__ import annotations

import torch
from peft.utils.other import get_pattern_key

from generation.layer_changes import (
    DoraChange,
    Factor,
    HadamardChange,
    KroneckerChange,
    LayerChange,
    LowRankChange,
)
from generation.layer_names import LayerNames, LayerTarget

LORA_PARTS = ("lora_down.weight", "lora_up.weight")
LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
PARTS = (*LORA_PARTS, *LOKR_PARTS, *LOHA_PARTS, "alpha", "dora_scale")
# Parts only LyCORIS-layout files have (a file with none is read as a plain LoRA).
LYCORIS_PARTS = (*LOKR_PARTS, *LOHA_PARTS, "dora_scale")


def is_lycoris(keys) -> bool:
    return any(key.endswith(f".{part}") for key in keys for part in LYCORIS_PARTS)


def read_lycoris(
    tensors: dict[str, torch.Tensor], metadata: dict | None, layers: LayerNames
) -> tuple[dict[LayerTarget, LayerChange], list[str]]:
    """The change of each layer `tensors` names, and the keys that make none."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    unplaced = []
    for key, value in tensors.items():
        part = next((p for p in PARTS if key.endswith(f".{p}")), None)
        if part is None:
            unplaced.append(key)
        else:
            grouped.setdefault(key.removesuffix(f".{part}"), {})[part] = value
    changes: dict[LayerTarget, LayerChange] = {}
    for name, parts in grouped.items():
        target = layers.find(name)
        change = None
        if target is not None and target not in changes:
            peft_scale = _peft_scale(metadata, target, name)
            change = _change(parts, peft_scale)
        if change is None:
            unplaced += [f"{name}.{part}" for part in parts]
        else:
            changes[target] = change
    return changes, unplaced


def _change(parts: dict[str, torch.Tensor], peft_scale: float | None) -> LayerChange | None:
    """The change `parts` (one layer's tensors) make, or None when they make none exactly."""
    found = _unscaled(parts)
    if found is None:
        return None
    kind, factors, rank, used = found
    if used | ({"alpha", "dora_scale"} & set(parts)) != set(parts):
        return None
    scale = 1.0 if peft_scale is None else peft_scale
    if "alpha" in parts:
        scale = float(parts["alpha"]) / rank if rank is not None else 1.0
    change = kind(*factors, scale)
    if "dora_scale" in parts:
        change = DoraChange(change, parts["dora_scale"], on_output=None)
    return change


def _unscaled(parts: dict[str, torch.Tensor]):
    """(change class, its factors, the rank alpha divides by, the parts used), or None."""
    if set(LORA_PARTS) <= set(parts):
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        return LowRankChange, (up, down), down.shape[0], set(LORA_PARTS)
    if any(part in parts for part in LOKR_PARTS):
        w1, w2 = _factor(parts, "lokr_w1", None), _factor(parts, "lokr_w2", "lokr_t2")
        if w1 is None or w2 is None:
            return None
        decomposed = [f for f in (w2, w1) if f.whole is None]  # w2's rank counts first
        rank = decomposed[0].b.shape[0] if decomposed else None
        return KroneckerChange, (w1, w2), rank, {p for p in LOKR_PARTS if p in parts}
    if "hada_w1_a" in parts:
        w1, w2 = _factor(parts, "hada_w1", "hada_t1"), _factor(parts, "hada_w2", "hada_t2")
        if w1 is None or w2 is None or w1.shape != w2.shape:
            return None
        return HadamardChange, (w1, w2), w1.b.shape[0], {p for p in LOHA_PARTS if p in parts}
    return None


def _factor(parts: dict[str, torch.Tensor], name: str, core: str | None) -> Factor | None:
    """`name` stored whole, or `name`_a @ `name`_b (with the Tucker `core`, if given, stored)."""
    if name in parts:
        return Factor(whole=parts[name]) if f"{name}_a" not in parts else None
    a, b = parts.get(f"{name}_a"), parts.get(f"{name}_b")
    if a is None or b is None:
        return None
    return Factor(a=a, b=b, core=parts.get(core) if core else None)


def _peft_scale(metadata: dict | None, target: LayerTarget, name: str) -> float | None:
    """peft's alpha / r for the layer `name`, from the adapter config diffusers writes into
    the file's metadata (keys `<component>.r`, `<component>.alpha`, their patterns)."""
    prefix = f"{target.component}."
    config = {
        k.removeprefix(prefix): v for k, v in (metadata or {}).items() if k.startswith(prefix)
    }
    if "r" not in config or "alpha" not in config or not name.startswith(prefix):
        return None
    module = name.removeprefix(prefix)
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    rank = ranks.get(get_pattern_key(ranks.keys(), module), config["r"])
    alpha = alphas.get(get_pattern_key(alphas.keys(), module), config["alpha"])
    return alpha / rank
