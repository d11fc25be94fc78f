"""The names LoRA files give a model's layers, each resolved to the layers it means.

Files name a layer in one of several ways (ComfyUI's key tables, comfy/lora.py, take the
same ones): diffusers names with the component (`unet.down_blocks.1.attentions.0.…to_q`);
kohya names, the module path with `_` for `.` after a prefix (`lora_unet_…`, `lora_te1_…`;
SimpleTuner's LyCORIS files: `lycoris_…` for the denoiser); for SDXL's and SD 1.5's UNet
also the original SGM path (`lora_unet_input_blocks_4_1_…`, kohya's SDXL scripts); for
FLUX.1 also BFL's path, whose fused layers stand for several diffusers layers, their rows
stacked (`lora_unet_double_blocks_0_img_attn_qkv` = to_q, to_k, to_v). CLIP's layers are
named with or without `text_model.` (transformers 5 dropped it from CLIPTextModel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from families import ModelFamily
from formats.bundle import TEXT_MODEL

# SimpleTuner's LyCORIS prefix for the denoiser's layers (diffusers paths), which ComfyUI reads.
LYCORIS_PREFIX = "lycoris"


@dataclass(frozen=True)
class LayerTarget:
    """What a file's layer name means: `modules` of the pipeline `component` whose weights,
    their rows stacked in this order, form the weight the file changes (one module unless
    the file names a fused BFL layer)."""

    component: str
    modules: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.component}.{'+'.join(self.modules)}"


class LayerNames:
    """Every name a LoRA file may give one of the models' linear or convolution layers. Built
    from the models before any LoRA wraps their layers."""

    def __init__(self, components: dict[str, torch.nn.Module], family: ModelFamily):
        self._targets: dict[str, LayerTarget] = {}
        encoder_prefixes = dict(
            zip(family.text_encoder_names, family.kohya_text_encoder_prefixes, strict=False)
        )
        for component, model in components.items():
            layers = [
                name
                for name, module in model.named_modules()
                if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
            ]
            if component == family.denoiser:
                prefixes = (family.kohya_unet_prefix, LYCORIS_PREFIX)
                self._add_layers(component, layers, prefixes, text_model=False)
                self._add_original_names(component, model, set(layers), family)
            else:
                prefixes = (encoder_prefixes[component],)
                self._add_layers(component, layers, prefixes, text_model=True)

    def find(self, name: str) -> LayerTarget | None:
        return self._targets.get(name)

    def _add_layers(self, component, layers, prefixes, text_model: bool) -> None:
        for layer in layers:
            target = LayerTarget(component, (layer,))
            path = layer.removeprefix(f"{TEXT_MODEL}.")
            paths = (path, f"{TEXT_MODEL}.{path}") if text_model else (layer,)
            for written in paths:
                self._targets[f"{component}.{written}"] = target
                for prefix in prefixes:
                    self._targets[_kohya(prefix, written)] = target

    def _add_original_names(self, component: str, model, layers: set[str], family) -> None:
        """The denoiser's layers by the original checkpoint's names (the family's: SGM's,
        BFL's fused layers, ...)."""
        for name, parts in family.original_layer_names(model, layers).items():
            target = LayerTarget(component, parts)
            self._targets.setdefault(_kohya(family.kohya_unet_prefix, name), target)


def _kohya(prefix: str, path: str) -> str:
    return f"{prefix}_{path.replace('.', '_')}"
