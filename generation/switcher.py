"""Make the requested trained weights active in the shared models, and nothing else.

Per request the predictor asks for a `Selection` (the trained weights, the LoRAs stacked on
them, their scales). The switcher changes only what differs from the current state:

1. full fine-tune UNet tensors: copied in; the base values are kept on the CPU and copied
   back exactly when another bundle (or none) is requested;
2. layer changes that are not low-rank (LoKr, LoHa, DoRA): written into the weights (on top
   of a full fine-tune's), the weights they had kept on the CPU and copied back exactly
   (generation/weight_patches.py);
3. LoRA: each component (UNet, both text encoders) has a "main" slot and one slot per
   stacked LoRA ("stacked0", "stacked1", ...); a LoRA on the modules a slot already wraps (any
   rank) goes into it in place (its parameters are pointed at the cached tensors); an unused
   slot is switched off (its layers compute exactly the base output) rather than removed;
4. trained tokens: installed into the base *and* the refiner text encoders; each token count
   gets its own copy of the tokenizers, and a request without tokens gets the pristine ones.

Everything is checked before anything changes; if a switch still fails or is cancelled
midway (Cog raises `CancelationException`, a BaseException), the models are reset to the
base state before the error propagates, so the next request starts clean.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from peft.tuners.lora import LoraLayer

from formats.tokens import TokenEmbeddingsHandler
from generation.lora import LoraFormatError, LoraSlot, PreparedLora
from generation.weight_patches import WeightPatcher
from generation.weights_cache import PreparedWeights

MAIN_SLOT = "main"


@dataclass(frozen=True)
class Selection:
    main: PreparedWeights | None = None
    main_scale: float = 1.0
    stacked: tuple[tuple[PreparedLora, float], ...] = ()  # (LoRA, scale), in order

    def slots(self) -> dict[str, tuple[PreparedLora | None, float]]:
        """Slot name -> (LoRA, scale): the main weights' LoRA, then each stacked one."""
        slots = {MAIN_SLOT: (self.main.lora if self.main else None, self.main_scale)}
        slots.update((stacked_slot(i), pair) for i, pair in enumerate(self.stacked))
        return slots

    def patching(self) -> tuple[tuple[PreparedLora, float], ...]:
        """(LoRA, scale) of each LoRA with layer changes, in order."""
        return tuple(pair for pair in self.slots().values() if pair[0] and pair[0].patches)


def stacked_slot(index: int) -> str:
    return f"stacked{index}"  # PEFT adapter names may not contain dots


@dataclass
class TokenTarget:
    """Where trained tokens go: encoders and their pristine tokenizers (None where a model has
    no such encoder, as the refiner's first), and how to hand tokenizers to the pipelines."""

    encoders: Sequence
    tokenizers: Sequence
    install: Callable[[list], None]
    _with_tokens: dict[int, list] = field(default_factory=dict)

    def tokenizers_for(self, count: int) -> list:
        if count not in self._with_tokens:
            self._with_tokens[count] = [copy.deepcopy(t) for t in self.tokenizers]
        return self._with_tokens[count]


class WeightsSwitcher:
    def __init__(self, components: dict[str, torch.nn.Module], token_targets: list[TokenTarget]):
        """`components`: the modules LoRAs address by prefix (`unet`, `text_encoder`,
        `text_encoder_2`); absent ones may be left out."""
        self.components = components
        self.token_targets = token_targets
        self.active = Selection()
        self._slots: dict[tuple[str, str], LoraSlot] = {}  # (component, slot name), on demand
        self._active_slots: dict[str, list[str] | None] = {}  # per component
        self._unet_backup: dict[str, torch.Tensor] = {}  # base values of overwritten tensors
        self._unet_modified: set[str] = set()
        self._unet_loaded: dict | None = None
        self._patcher = WeightPatcher(components)
        self._tokens_loaded: dict | None = None

    def activate(self, selection: Selection) -> None:
        if selection == self.active:
            return
        self.check(selection)
        try:
            unet = selection.main.unet if selection.main else None
            if unet is not self._unet_loaded:
                self._patcher.forget()  # the weights it changed are about to change under it
            self._apply_unet(unet)
            self._patcher.apply(selection.patching())
            self._apply_loras(selection)
            self._apply_tokens(selection.main.token_vectors if selection.main else None)
            self.active = selection
        except BaseException:
            self.reset()
            raise

    def check(self, selection: Selection) -> None:
        """Raise a clear error if the selection does not fit the models; changes nothing."""
        for owner, _ in selection.slots().values():
            for component, part in owner.modules.items() if owner else ():
                if component not in self.components:
                    raise LoraFormatError(
                        f"{owner.source} has LoRA weights for {component}, which this model lacks."
                    )
                self._slot(component, MAIN_SLOT).check(part)
            if owner:
                self._patcher.check(owner)
        if selection.main and selection.main.unet:
            self._check_unet(selection.main)
        if selection.main and selection.main.token_vectors:
            self._check_tokens(selection.main)

    def reset(self) -> None:
        """Back to the base model: no LoRA layers, base UNet values, pristine tokenizers."""
        self._patcher.forget()
        for component in self.components.values():
            _unwrap_lora_layers(component)
        self._slots = {}
        self._active_slots = {}
        self._revert_unet()
        self._unet_loaded = None
        for target in self.token_targets:
            target.install(list(target.tokenizers))
        self._tokens_loaded = None
        self.active = Selection()

    # --- 1. full fine-tune UNet ---------------------------------------------------------------

    def _apply_unet(self, tensors: dict | None) -> None:
        if tensors is self._unet_loaded:
            return
        self._revert_unet()
        self._unet_loaded = None
        if tensors:
            parameters = self._unet_parameters()
            with torch.no_grad():
                for name, value in tensors.items():
                    target = parameters[name]
                    if name not in self._unet_backup:
                        self._unet_backup[name] = target.detach().to("cpu", copy=True)
                    self._unet_modified.add(name)  # before the copy: a half copy is reverted
                    target.copy_(value)
        self._unet_loaded = tensors

    def _revert_unet(self) -> None:
        if not self._unet_modified:
            return
        parameters = self._unet_parameters()
        with torch.no_grad():
            for name in list(self._unet_modified):
                parameters[name].copy_(self._unet_backup[name])
                self._unet_modified.discard(name)

    def _unet_parameters(self) -> dict[str, torch.Tensor]:
        """UNet tensors by their base-model names (PEFT renames wrapped ones `base_layer`)."""
        state = self.components["unet"].state_dict(keep_vars=True)
        return {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}

    def _check_unet(self, weights: PreparedWeights) -> None:
        parameters = self._unet_parameters()
        for name, value in weights.unet.items():
            if name not in parameters or parameters[name].shape != value.shape:
                raise LoraFormatError(
                    f"{weights.source}: the UNet weights do not fit this base model "
                    f"({name!r} {'is unknown' if name not in parameters else 'has another shape'})."
                )

    # --- 3. LoRA slots --------------------------------------------------------------------------

    def _apply_loras(self, selection: Selection) -> None:
        wanted = selection.slots()
        for component_name in self.components:
            active, rebuilt = [], False
            for slot_name, (lora, scale) in wanted.items():
                part = lora.modules.get(component_name) if lora else None
                if part is None:
                    continue
                slot = self._slot(component_name, slot_name)
                if slot.loaded is not lora:
                    rebuilt |= slot.load(part, lora)
                slot.set_scale(scale)
                active.append(slot_name)
            if rebuilt or self._active_slots.get(component_name) != active:
                self._active_slots[component_name] = None  # unknown until set
                layers = {
                    id(layer): layer
                    for (component, _), slot in self._slots.items()
                    if component == component_name
                    for layer in slot.layers.values()
                }
                _set_active_adapters(layers.values(), active)
                self._active_slots[component_name] = active

    def _slot(self, component: str, name: str) -> LoraSlot:
        if (component, name) not in self._slots:
            self._slots[component, name] = LoraSlot(self.components[component], name)
        return self._slots[component, name]

    # --- 4. tokens ------------------------------------------------------------------------------

    def _apply_tokens(self, vectors: dict | None) -> None:
        if vectors is self._tokens_loaded:
            return
        self._tokens_loaded = None
        for target in self.token_targets:
            if vectors is None:
                target.install(list(target.tokenizers))
                continue
            tokenizers = target.tokenizers_for(next(iter(vectors.values())).shape[0])
            TokenEmbeddingsHandler(target.encoders, tokenizers).load_vectors(vectors)
            target.install(tokenizers)
        self._tokens_loaded = vectors

    def _check_tokens(self, weights: PreparedWeights) -> None:
        for target in self.token_targets:
            for index, encoder in enumerate(target.encoders):
                if encoder is None:
                    continue
                width = encoder.get_input_embeddings().weight.shape[1]
                vectors = weights.token_vectors[index]
                if vectors.ndim != 2 or vectors.shape[1] != width:
                    raise LoraFormatError(
                        f"{weights.source}: token embeddings for text encoder {index} have shape "
                        f"{tuple(vectors.shape)}, but the encoder's width is {width}: they were "
                        "trained for another base model."
                    )


def _set_active_adapters(layers, active: list[str]) -> None:
    """Switch each PEFT layer to the active slots it holds; with none it computes exactly the
    base layer's output."""
    for layer in layers:
        names = [name for name in active if name in layer.lora_A]
        if layer.active_adapters != names:
            layer._active_adapter = names  # PEFT's set_adapter also toggles grads


def _unwrap_lora_layers(component: torch.nn.Module) -> None:
    """Replace every PEFT layer by the layer it wraps, however far a failed switch got."""
    for name, module in list(component.named_modules()):
        if isinstance(module, LoraLayer):
            parent_name, _, child = name.rpartition(".")
            setattr(component.get_submodule(parent_name), child, module.get_base_layer())
    if hasattr(component, "peft_config"):
        del component.peft_config
