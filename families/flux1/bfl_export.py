"""A Flux LoRA in BFL / kohya naming (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`),
the layout ComfyUI and Forge load (their key tables map `lora_unet_` + the BFL module path)
and diffusers' `FluxPipeline.load_lora_weights` reads back.

BFL fuses some of diffusers' linear layers into one weight (bfl_names.py). ComfyUI
skips split q/k/v under kohya names, so the parts of a fused layer become one LoRA: the downs
stacked, the ups block-diagonal (rank n·r; a part that was not trained is a zero block), which
computes exactly the parts' sum. The alpha/rank scale is folded into the ups and each `.alpha`
is the module's rank, so every loader applies scale 1.
"""

from __future__ import annotations

import re

import torch

from families.flux1.bfl_names import BLOCKS, fused_parts

MODULE = re.compile(r"transformer\.(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)")


class UnmappableModulesError(ValueError):
    """LoRA modules outside the blocks, which the BFL layout's loaders do not take."""


def to_bfl_kohya(
    diffusers_lora: dict[str, torch.Tensor],
    alpha: float,
    widths: dict[str, int],
    prefix: str = "lora_unet",
    blocks: dict = BLOCKS,
) -> dict[str, torch.Tensor]:
    """`diffusers_lora`: `transformer.<module>.lora_A/B.weight` tensors with one alpha;
    `widths`: the output width of each diffusers module (`transformer.<module>`), for the
    zero blocks of fused parts that were not trained; `blocks`: the model's BFL tables
    (bfl_names.py's FLUX.1 ones by default). Returns the kohya-named tensors."""
    fused: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    part_modules: dict[str, list[str]] = {}  # BFL name -> its diffusers modules, by part
    unmapped = []
    for key in sorted(k for k in diffusers_lora if k.endswith(".lora_A.weight")):
        module = key.removesuffix(".lora_A.weight")
        match = MODULE.fullmatch(module)
        if match is None or match[3] not in blocks[match[1]][1]:
            unmapped.append(module)
            continue
        block_kind, index, suffix = match.groups()
        bfl_block, table = blocks[block_kind]
        target, part, _ = table[suffix]
        name = f"{prefix}_{bfl_block}_{index}_{target}"
        down = diffusers_lora[key].float()
        up = diffusers_lora[f"{module}.lora_B.weight"].float() * (alpha / down.shape[0])
        fused.setdefault(name, {})[part] = (down, up)
        part_modules[name] = [
            f"transformer.{block_kind}.{index}.{s}" for s in fused_parts(table)[target]
        ]
    if unmapped:
        raise UnmappableModulesError(
            f"{len(unmapped)} LoRA modules lie outside the transformer blocks (e.g. "
            f"{unmapped[0]}), which BFL-layout loaders do not take."
        )
    result = {}
    for name, parts in fused.items():
        down, up = _fuse(parts, [widths[m] for m in part_modules[name]])
        result[f"{name}.lora_down.weight"] = down.contiguous()
        result[f"{name}.lora_up.weight"] = up.contiguous()
        result[f"{name}.alpha"] = torch.tensor(float(down.shape[0]))
    return result


def _fuse(parts: dict[int, tuple[torch.Tensor, torch.Tensor]], widths: list[int]):
    """One (down, up) pair computing the sum of the parts' LoRAs, each writing its own rows
    of the fused output: downs stacked, ups block-diagonal; missing parts are zero blocks."""
    if len(widths) == 1:
        return parts[0]
    rank = max(down.shape[0] for down, _ in parts.values())
    width_in = next(iter(parts.values()))[0].shape[1]
    downs, ups = [], []
    for part, width in enumerate(widths):
        down, up = parts.get(part, (torch.zeros(0, width_in), torch.zeros(width, 0)))
        pad = rank - down.shape[0]
        downs.append(torch.cat([down, down.new_zeros(pad, width_in)]))
        ups.append(torch.cat([up, up.new_zeros(width, pad)], dim=1))
    return torch.cat(downs), torch.block_diag(*ups)
