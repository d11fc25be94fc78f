"""LoRA weights read once into a canonical form, and swapped into a model in place.

Every supported low-rank layout (this project's diffusers/PEFT keys, kohya keys, the original
Replicate trainer's attention-processor keys) is converted with diffusers' own converters
into one form: per model component, per target module, the pair (lora_A, lora_B) with the
module's alpha/rank scale folded into lora_B. Changes that are not low-rank pairs (LyCORIS's
LoKr and LoHa, DoRA in kohya's `dora_scale` or peft's `lora_magnitude_vector` keys) are read
into per-layer changes (generation/lycoris.py) that patch the weights instead
(generation/weight_patches.py). The model then holds each LoRA "slot" as PEFT
layers whose own scale is just the user's `lora_scale`, so switching to another LoRA on the
same modules (of any rank) only points the existing LoRA parameters at the new tensors: no
module is built or removed and nothing is copied. (This rebinding would invalidate a
torch.compile'd or CUDA-graphed model; the predictor runs eagerly.)
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
from diffusers.utils import (
    convert_state_dict_to_diffusers,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
)
from diffusers.utils.peft_utils import _create_lora_config
from diffusers.utils.state_dict_utils import _load_sft_state_dict_metadata
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.utils.other import get_pattern_key
from safetensors import safe_open

from families import ModelFamily
from formats.bundle import TEXT_MODEL
from generation.layer_changes import DoraChange, LayerChange, LowRankChange
from generation.layer_names import LayerNames, LayerTarget
from generation.lycoris import is_lycoris, read_lycoris
from weights.runtime import Runtime

# The pipeline components a LoRA file may address, by their key prefix (the denoiser of each
# family, then the text encoders).
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")
DENOISERS = ("unet", "transformer")
KEYS_ADVICE = (
    "Nothing was loaded. Use a LoRA saved by diffusers, peft, kohya's scripts or LyCORIS for "
    "this base model (`.lora_A/.lora_B`, `.lora_down/.lora_up`, LoKr `.lokr_w1/.lokr_w2`, "
    "LoHa `.hada_w1_a/…`, DoRA `.dora_scale` keys)."
)
# The key of peft's DoRA magnitude of a module, in diffusers' files.
MAGNITUDE = "lora_magnitude_vector"


class LoraFormatError(ValueError):
    """A LoRA file that cannot be applied to this base model."""


@dataclass(frozen=True)
class ModuleLora:
    down: torch.Tensor  # lora_A weight
    up: torch.Tensor  # lora_B weight, already multiplied by alpha / rank

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass(frozen=True, eq=False)
class PreparedLora:
    """One LoRA in canonical form: component -> module name -> tensors (held in slots), and
    the changes of layers that are not low-rank (patched into the weights)."""

    source: str
    modules: dict[str, dict[str, ModuleLora]]
    patches: dict[LayerTarget, LayerChange] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        low_rank = sum(
            m.down.nbytes + m.up.nbytes for part in self.modules.values() for m in part.values()
        )
        return low_rank + sum(change.nbytes for change in self.patches.values())


def read_lora(
    file: Path,
    runtime: Runtime,
    family: ModelFamily,
    layers: LayerNames,
    source: str | None = None,
) -> PreparedLora:
    """Read a LoRA `.safetensors` in any supported layout into canonical form, on the
    runtime's device and in its dtype (so a slot can use the tensors as they are; a change's
    factors keep the file's dtype, computed in fp32). `layers`: the models' layer names.
    Low-rank conversion and alpha handling follow the family pipeline's `load_lora_weights`."""
    source = source or Path(file).name
    with safe_open(str(file), framework="pt", device=str(runtime.device)) as opened:
        if is_lycoris(opened.keys()):
            tensors = {key: opened.get_tensor(key) for key in opened.keys()}
            return _read_lycoris_file(file, tensors, layers, source)
    pipeline_class = getattr(diffusers, family.txt2img_pipeline)
    # SDXL's and SD 1.5's readers always return the alphas; FLUX.1's when asked; FLUX.2's
    # never (its converters fold them into the weights).
    asks = "return_alphas" in inspect.signature(pipeline_class.lora_state_dict).parameters
    try:
        read = pipeline_class.lora_state_dict(
            str(file), return_lora_metadata=True, **({"return_alphas": True} if asks else {})
        )
        state_dict, alphas, metadata = read if len(read) == 3 else (read[0], None, read[1])
    except (ValueError, KeyError, IndexError) as error:  # diffusers' converters on odd keys
        message = " ".join(str(error).split())[:300]
        raise LoraFormatError(
            f"{source}: diffusers cannot read its LoRA keys ({type(error).__name__}: "
            f"{message}). {KEYS_ADVICE}"
        ) from None
    prefixes = tuple(f"{c}." for c in COMPONENTS)
    if not any(key.startswith(prefixes) for key in state_dict):
        # The original Replicate trainer wrote UNet attention-processor keys without a prefix.
        state_dict = {f"unet.{key}": value for key, value in state_dict.items()}
    _refuse_unplaced(source, [key for key in state_dict if not key.startswith(prefixes)])
    modules, patches = {}, {}
    for component in COMPONENTS:
        part = _component_part(state_dict, component)
        if part:
            part_alphas = _component_part(alphas or {}, component) or None
            part_metadata = _component_part(metadata or {}, component) or None
            low_rank, changes = _canonical(
                part, part_alphas, part_metadata, component, runtime, layers, source
            )
            modules[component] = low_rank
            patches.update(changes)
    modules = {component: part for component, part in modules.items() if part}
    if not (modules or patches):
        raise LoraFormatError(
            f"{source}: no LoRA weights for the {family.denoiser} or the text encoders."
        )
    return PreparedLora(source, modules, patches)


def _read_lycoris_file(
    file: Path, tensors: dict[str, torch.Tensor], layers: LayerNames, source: str
) -> PreparedLora:
    patches, unplaced = read_lycoris(tensors, _load_sft_state_dict_metadata(str(file)), layers)
    _refuse_unplaced(source, unplaced)
    if not patches:
        raise LoraFormatError(f"{source}: no LoRA weights in it.")
    return PreparedLora(source, {}, patches)


def _component_part(mapping: dict, component: str) -> dict:
    prefix = f"{component}."
    return {k.removeprefix(prefix): v for k, v in mapping.items() if k.startswith(prefix)}


def _refuse_unplaced(source: str, keys: list[str]) -> None:
    """Refuse a file with keys that no module takes, rather than apply part of it."""
    if keys:
        shown = ", ".join(sorted(keys)[:3]) + (
            f" and {len(keys) - 3} more" if len(keys) > 3 else ""
        )
        raise LoraFormatError(
            f"{source}: {len(keys)} LoRA keys cannot be placed: {shown}. {KEYS_ADVICE}"
        )


def _canonical(
    state_dict, alphas, metadata, component, runtime, layers: LayerNames, source
) -> tuple[dict[str, ModuleLora], dict[LayerTarget, LayerChange]]:
    """The component's low-rank pairs, and its DoRA modules as layer changes."""
    if component in DENOISERS:
        if not any("lora_A" in key for key in state_dict):  # Flux's readers give PEFT keys
            state_dict = convert_unet_state_dict_to_peft(state_dict)
    else:
        state_dict = convert_state_dict_to_peft(convert_state_dict_to_diffusers(state_dict))
        # Module names without CLIP's `text_model.`: files have it or not (transformers 5
        # flattened CLIPTextModel, not CLIPTextModelWithProjection); each slot puts it back
        # where its model has it.
        state_dict = {k.removeprefix(f"{TEXT_MODEL}."): v for k, v in state_dict.items()}
    if any(k.endswith("lora_B.bias") for k in state_dict):
        raise LoraFormatError("LoRA-bias weights are not supported.")
    paired = [
        k for k in state_dict if ".lora_A." in k and k.replace(".lora_A.", ".lora_B.") in state_dict
    ]
    magnitudes = {f"{k.split('.lora_A.')[0]}.{MAGNITUDE}" for k in paired} & set(state_dict)
    placed = {*paired, *(k.replace(".lora_A.", ".lora_B.") for k in paired), *magnitudes}
    _refuse_unplaced(source, [f"{component}.{k}" for k in state_dict if k not in placed])
    ranks = {k: v.shape[1] for k, v in state_dict.items() if "lora_B" in k and v.ndim > 1}
    config: LoraConfig = _create_lora_config(
        state_dict, alphas, metadata, {f"^{k}": r for k, r in ranks.items()}, component in DENOISERS
    )
    modules, patches = {}, {}
    for key in paired:
        down = state_dict[key]
        name = key.split(".lora_A.")[0]
        up = state_dict[key.replace(".lora_A.", ".lora_B.")]
        rank = config.rank_pattern.get(get_pattern_key(config.rank_pattern, name), config.r)
        alpha = config.alpha_pattern.get(
            get_pattern_key(config.alpha_pattern, name), config.lora_alpha
        )
        scale = alpha / math.sqrt(rank) if config.use_rslora else alpha / rank
        magnitude = state_dict.get(f"{name}.{MAGNITUDE}")
        if magnitude is not None:  # peft's DoRA: its magnitude is per output row
            target = layers.find(f"{component}.{name}")
            if target is None:
                _refuse_unplaced(source, [f"{component}.{name}.{MAGNITUDE}"])
            change = LowRankChange(up.to(runtime.device), down.to(runtime.device), scale)
            patches[target] = DoraChange(change, magnitude.to(runtime.device), on_output=True)
            continue
        up = (up.float() * scale).to(runtime.device, runtime.dtype)
        modules[name] = ModuleLora(down.to(runtime.device, runtime.dtype).contiguous(), up)
    return modules, patches


class LoraSlot:
    """One named LoRA adapter (e.g. the trained weights, or the extra LoRA) inside one model
    component, held as PEFT layers so another LoRA on the same modules swaps in by rebinding."""

    def __init__(self, component: torch.nn.Module, name: str):
        self.component = component
        self.name = name
        # Canonical text-encoder module names leave out `text_model.`; this model may have it.
        self._module_prefix = f"{TEXT_MODEL}." if hasattr(component, TEXT_MODEL) else ""
        self.layers: dict[str, LoraLayer] = {}  # module name -> PEFT layer holding this slot
        self._targets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.loaded: PreparedLora | None = None

    def check(self, lora: dict[str, ModuleLora]) -> None:
        """Raise a clear error, before anything changes, if `lora` does not fit the model."""
        lora = self._in_model_names(lora)
        if self._shapes(lora) == self._current_shapes():
            return  # the slot already holds these exact shapes, so they fit
        for name, module in lora.items():
            weight = target_layer(self.component, name).weight
            if module.down.shape[1] != weight.shape[1] or module.up.shape[0] != weight.shape[0]:
                raise LoraFormatError(
                    f"The LoRA for {name!r} has shape {tuple(module.up.shape[:1])} x "
                    f"{tuple(module.down.shape[1:2])}, but the model's layer is "
                    f"{tuple(weight.shape[:2])}: it was trained for another model."
                )

    def load(self, lora: dict[str, ModuleLora], owner: PreparedLora) -> bool:
        """Make this slot hold `lora`: its tensors become the LoRA parameters when it targets
        the same modules (of any rank: a linear or conv layer takes its sizes from its
        weight); otherwise the slot's layers are rebuilt first. Returns whether they were."""
        lora = self._in_model_names(lora)
        layout = {name: m.down.ndim for name, m in lora.items()}
        rebuilt = layout != {name: a.ndim for name, (a, _) in self._targets.items()}
        if rebuilt:
            self.remove()
            self._build(lora)
        self.loaded = None  # half-bound until the loop below finishes
        for name, module in lora.items():
            down, up = self._targets[name]
            down.data, up.data = module.down, module.up
        self.loaded = owner
        return rebuilt

    def _in_model_names(self, lora: dict[str, ModuleLora]) -> dict[str, ModuleLora]:
        return {self._module_prefix + name: module for name, module in lora.items()}

    @staticmethod
    def _shapes(lora: dict[str, ModuleLora]) -> dict:
        return {name: (m.down.shape, m.up.shape) for name, m in lora.items()}

    def _current_shapes(self) -> dict:
        return {name: (a.shape, b.shape) for name, (a, b) in self._targets.items()}

    def set_scale(self, scale: float) -> None:
        for layer in self.layers.values():
            layer.set_scale(self.name, scale)

    def remove(self) -> None:
        """Take this slot's layers out of the model; PEFT wrappers left empty are unwrapped."""
        for name, layer in self.layers.items():
            layer.delete_adapter(self.name)
            if not layer.lora_A:
                parent_name, _, child = name.rpartition(".")
                parent = self.component.get_submodule(parent_name)
                setattr(parent, child, layer.get_base_layer())
        self.layers, self._targets, self.loaded = {}, {}, None

    def _build(self, lora: dict[str, ModuleLora]) -> None:
        ranks = {name: module.rank for name, module in lora.items()}
        common = Counter(ranks.values()).most_common(1)[0][0]
        pattern = {f"^{n}$": r for n, r in ranks.items() if r != common}
        # alpha == rank everywhere: the real alpha/rank is folded into lora_B already.
        config = LoraConfig(
            r=common,
            lora_alpha=common,
            rank_pattern=pattern,
            alpha_pattern=pattern,
            target_modules=sorted(ranks),
            init_lora_weights=False,
        )
        with warnings.catch_warnings():  # a second slot in one model is intended here
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(config, self.component, adapter_name=self.name)
        for name in ranks:
            layer = self.component.get_submodule(name)
            self.layers[name] = layer
            self._targets[name] = (
                layer.lora_A[self.name].weight.requires_grad_(False),
                layer.lora_B[self.name].weight.requires_grad_(False),
            )


def lora_layers(component: torch.nn.Module) -> list[LoraLayer]:
    return [m for m in component.modules() if isinstance(m, LoraLayer)]


def target_layer(component: torch.nn.Module, name: str) -> torch.nn.Module:
    try:
        module = component.get_submodule(name)
    except AttributeError:
        raise LoraFormatError(
            f"The LoRA targets module {name!r}, which this base model does not have: "
            "it was trained for another model."
        ) from None
    base = module.get_base_layer() if isinstance(module, LoraLayer) else module
    if not isinstance(base, (torch.nn.Linear, torch.nn.Conv2d)):
        raise LoraFormatError(f"The LoRA targets {name!r}, which is not a linear or conv layer.")
    return base
