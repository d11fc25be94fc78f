"""The UNet families' tensor names in the original SGM layout (Stability's checkpoints, which
single-file checkpoints and kohya's SDXL LoRA files use: `input_blocks.4.1.…`), by their
diffusers names."""

from __future__ import annotations

import re

UNET_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}


def unet_ldm_names(unet) -> dict[str, str]:
    """Each tensor's name of a diffusers `UNet2DConditionModel` in the original SGM layout, by
    its diffusers name (kohya's SDXL LoRA files name the UNet's layers this way too)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    config = unet.config
    per_block = config.layers_per_block + 1  # resnets plus the down/upsampler slot
    renames: list[tuple[str, str]] = []
    for i in range(len(config.down_block_types)):
        for j in range(config.layers_per_block):
            slot = 1 + i * per_block + j
            renames.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{slot}.0."))
            renames.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{slot}.1."))
        renames.append(
            (f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * per_block}.0.op.")
        )
    for i, block_type in enumerate(config.up_block_types):
        for j in range(per_block):
            slot = i * per_block + j
            renames.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{slot}.0."))
            renames.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{slot}.1."))
        upsampler = 2 if "CrossAttn" in block_type else 1  # after the attention, if any
        last = i * per_block + per_block - 1
        renames.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{last}.{upsampler}."))
    renames += [
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    fixed = {
        **DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"],
        **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"],
    }

    names = {}
    for key in unet.state_dict():
        if key in fixed:
            names[key] = fixed[key]
            continue
        new_key = rename_prefix(key, renames)
        if ".resnets." in key:
            new_key = rename_parts(new_key, UNET_RESNET_NAMES)
        names[key] = new_key
    return names


def rename_prefix(key: str, renames: list[tuple[str, str]]) -> str:
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def rename_parts(key: str, names: dict[str, str]) -> str:
    """Rename dotted name parts (`norm1` in `….norm1.weight`), never substrings of others."""
    for old, new in names.items():
        key = re.sub(rf"(^|\.){re.escape(old)}\.", rf"\g<1>{new}.", key)
    return key
