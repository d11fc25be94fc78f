"""FLUX.2's transformer layers in BFL's names (the original checkpoints', which ComfyUI loads and
whose module paths kohya-named LoRA files write: `lora_unet_double_blocks_0_img_attn_qkv`),
in the table form of FLUX.1's (families/flux1/bfl_names.py).

Read from diffusers' converter of BFL's FLUX.2 checkpoints (scripts/convert_flux2_to_diffusers.py)
and its LoRA readers (loaders/lora_conversion_utils.py, `_convert_kohya_flux2_lora_to_diffusers`):
a double block's image q, k, v are one BFL weight, `img_attn.qkv` (text: `txt_attn.qkv`); its
SwiGLU MLP is `img_mlp.0` (in) and `img_mlp.2` (out). A single block's fused projection is
already one layer in diffusers (`attn.to_qkv_mlp_proj` = `linear1`). FLUX.2 has no per-block
modulation layers (its modulation is shared by all blocks).
"""

from __future__ import annotations

from families.flux1.bfl_names import DOUBLE_BLOCK as FLUX1_DOUBLE_BLOCK

# diffusers module suffix -> (BFL module, part index within the fused weight, part count):
# the attention layers as FLUX.1's, the MLPs as FLUX.2's SwiGLU names them.
DOUBLE_BLOCK = {
    **{suffix: name for suffix, name in FLUX1_DOUBLE_BLOCK.items() if suffix.startswith("attn.")},
    "ff.linear_in": ("img_mlp_0", 0, 1),
    "ff.linear_out": ("img_mlp_2", 0, 1),
    "ff_context.linear_in": ("txt_mlp_0", 0, 1),
    "ff_context.linear_out": ("txt_mlp_2", 0, 1),
}
SINGLE_BLOCK = {
    "attn.to_qkv_mlp_proj": ("linear1", 0, 1),
    "attn.to_out": ("linear2", 0, 1),
}
# diffusers block list -> (BFL block list, its table)
BLOCKS = {
    "transformer_blocks": ("double_blocks", DOUBLE_BLOCK),
    "single_transformer_blocks": ("single_blocks", SINGLE_BLOCK),
}
