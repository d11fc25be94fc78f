"""FLUX.1's layers in BFL naming (the original checkpoints', which kohya-layout LoRA files use:
`lora_unet_double_blocks_0_img_attn_qkv`) and in diffusers naming. BFL fuses some of
diffusers' linear layers into one weight, their rows stacked: a double block's image q, k, v
into `img_attn_qkv` (text: `txt_attn_qkv`), a single block's q, k, v and MLP input into
`linear1`. The trainer writes these names (bfl_export.py), the predictor reads them
(generation/layer_names.py)."""

from __future__ import annotations

# diffusers module suffix -> (BFL module, part index within the fused weight, part count)
DOUBLE_BLOCK = {
    "attn.to_q": ("img_attn_qkv", 0, 3),
    "attn.to_k": ("img_attn_qkv", 1, 3),
    "attn.to_v": ("img_attn_qkv", 2, 3),
    "attn.add_q_proj": ("txt_attn_qkv", 0, 3),
    "attn.add_k_proj": ("txt_attn_qkv", 1, 3),
    "attn.add_v_proj": ("txt_attn_qkv", 2, 3),
    "attn.to_out.0": ("img_attn_proj", 0, 1),
    "attn.to_add_out": ("txt_attn_proj", 0, 1),
    "ff.net.0.proj": ("img_mlp_0", 0, 1),
    "ff.net.2": ("img_mlp_2", 0, 1),
    "ff_context.net.0.proj": ("txt_mlp_0", 0, 1),
    "ff_context.net.2": ("txt_mlp_2", 0, 1),
    "norm1.linear": ("img_mod_lin", 0, 1),
    "norm1_context.linear": ("txt_mod_lin", 0, 1),
}
SINGLE_BLOCK = {
    "attn.to_q": ("linear1", 0, 4),
    "attn.to_k": ("linear1", 1, 4),
    "attn.to_v": ("linear1", 2, 4),
    "proj_mlp": ("linear1", 3, 4),
    "proj_out": ("linear2", 0, 1),
    "norm.linear": ("modulation_lin", 0, 1),
}
# diffusers block list -> (BFL block list, its table)
BLOCKS = {
    "transformer_blocks": ("double_blocks", DOUBLE_BLOCK),
    "single_transformer_blocks": ("single_blocks", SINGLE_BLOCK),
}


def fused_parts(table: dict[str, tuple[str, int, int]]) -> dict[str, list[str]]:
    """BFL module -> the diffusers module suffixes whose weights it stacks, in row order."""
    parts: dict[str, list[str]] = {}
    for suffix, (target, _, _) in sorted(table.items(), key=lambda item: item[1][1]):
        parts.setdefault(target, []).append(suffix)
    return parts
