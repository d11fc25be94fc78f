"""Layer weights changed in place by LoRA files whose change is not low-rank (LoKr, LoHa,
DoRA: generation/layer_changes.py), and put back exactly.

A layer's new weight is W + Σ strength_i · delta_i(W), computed in fp32 from the weight W it
had before any file changed it and cast once to the model's dtype: each file's change is
taken against the same W, so stacked files add up in any order (a DoRA rescales W plus its
own ΔW, as when it is the only file on the layer). W is kept on the CPU the first time a
layer changes and copied back bit for bit; it stays valid until the weights under the files
(the base or a full fine-tune) change, when `forget` drops it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from generation.layer_changes import LayerChange
from generation.layer_names import LayerTarget
from generation.lora import LoraFormatError, PreparedLora, target_layer


class WeightPatcher:
    def __init__(self, components: dict[str, torch.nn.Module]):
        self.components = components
        self.applied: tuple[tuple[PreparedLora, float], ...] | None = ()  # None: half applied
        self._original: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._changed: set[tuple[str, str]] = set()  # (component, module) now differing

    def check(self, lora: PreparedLora) -> None:
        """Raise a clear error, changing nothing, if a change of `lora` does not fit."""
        for target, change in lora.patches.items():
            if target.component not in self.components:
                raise LoraFormatError(
                    f"{lora.source} changes {target.component}, which this model lacks."
                )
            weights = self._weights(target)
            rows = sum(w.shape[0] for w in weights)
            problem = change.misfit(torch.Size((rows, *weights[0].shape[1:])))
            if problem is not None:
                shape = "x".join(map(str, (rows, *weights[0].shape[1:])))
                raise LoraFormatError(
                    f"{lora.source}: the change of {target} {problem}, but the model's weight "
                    f"is {shape}: it was made for another model."
                )

    def apply(self, loras: Sequence[tuple[PreparedLora, float]]) -> None:
        """Make the layers hold the base weights changed by `loras` (file, strength), and no
        other file's changes."""
        loras = tuple(loras)
        if loras == self.applied:
            return
        self.restore()
        self.applied = None
        changes: dict[LayerTarget, list[tuple[LayerChange, float]]] = {}
        for lora, strength in loras:
            if strength:
                for target, change in lora.patches.items():
                    changes.setdefault(target, []).append((change, strength))
        with torch.no_grad():
            for target, target_changes in changes.items():
                self._change(target, target_changes)
        self.applied = loras

    def restore(self) -> None:
        """Put back the weights every changed layer had before."""
        with torch.no_grad():
            for key in list(self._changed):
                weight, original = self._original[key]
                weight.copy_(original)
                self._changed.discard(key)
        self.applied = ()

    def forget(self) -> None:
        """Restore, then drop the kept weights: the weights under the files are changing."""
        self.restore()
        self._original = {}

    def _change(self, target: LayerTarget, changes: list[tuple[LayerChange, float]]) -> None:
        weights = self._weights(target)
        for module, weight in zip(target.modules, weights, strict=True):
            key = (target.component, module)
            if key not in self._original:
                self._original[key] = (weight, weight.detach().to("cpu", copy=True))
            self._changed.add(key)  # before the copy: a half-written weight is put back too
        before = torch.cat([weight.detach().float() for weight in weights])
        after = before.clone()
        for change, strength in changes:
            after += strength * change.delta(before)
        for weight, rows in zip(weights, after.split([w.shape[0] for w in weights]), strict=True):
            weight.copy_(rows)

    def _weights(self, target: LayerTarget) -> list[torch.Tensor]:
        component = self.components[target.component]
        return [target_layer(component, module).weight for module in target.modules]
