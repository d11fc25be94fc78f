"""SDXL checkpoints (base or refiner) as one `.safetensors` file in the original SGM
(Stability) key layout: the form custom SDXL models are shared in, and what ComfyUI and
AUTOMATIC1111 load.

`export_single_file` writes a diffusers SDXL folder in that layout. It is the inverse
of diffusers' own single-file converters (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `create_diffusers_clip_model_from_ldm`), built on their
`DIFFUSERS_TO_LDM_MAPPING` table, so `from_single_file` reads the result back exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, LDM_UNET_KEY
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from families.sgm_names import rename_parts, rename_prefix, unet_ldm_names

VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."  # SDXL base's first text encoder
CLIP_G_PREFIX = "conditioner.embedders.1.model."  # its second, in OpenCLIP's layout
REFINER_CLIP_G_PREFIX = "conditioner.embedders.0.model."  # the refiner has only OpenCLIP

VAE_ATTENTION_NAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
OPEN_CLIP_LAYER_NAMES = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def export_single_file(folder: Path, output: Path) -> Path:
    """Write the SDXL base or refiner pipeline in `folder` as one SGM-layout safetensors
    file (a refiner is a folder without `text_encoder`)."""
    folder, output = Path(folder), Path(output)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    clip_g = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2")

    tensors = {}
    tensors.update(_prefixed(LDM_UNET_KEY, unet_to_ldm(unet)))
    tensors.update(_prefixed(VAE_PREFIX, vae_to_ldm(vae)))
    if (folder / "text_encoder").is_dir():
        clip_l = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
        tensors.update(_prefixed(CLIP_L_PREFIX, clip_to_ldm(clip_l)))
        tensors.update(_prefixed(CLIP_G_PREFIX, open_clip_to_ldm(clip_g)))
    else:
        tensors.update(_prefixed(REFINER_CLIP_G_PREFIX, open_clip_to_ldm(clip_g)))
    output.parent.mkdir(parents=True, exist_ok=True)
    temp = output.with_name(f".{output.name}.part")
    save_file({k: v.contiguous() for k, v in tensors.items()}, temp)
    temp.replace(output)
    return output


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    names = unet_ldm_names(unet)
    return {names[key]: value for key, value in unet.state_dict().items()}


def vae_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    levels = len(vae.config.up_block_types)
    renames: list[tuple[str, str]] = []
    for i in range(levels):
        renames.append((f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."))
        renames.append(
            (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
        )
        level = levels - 1 - i  # the original decoder counts its levels from the bottom
        renames.append((f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{level}.block."))
        renames.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{level}.upsample."))
    for part in ("encoder", "decoder"):
        renames.append((f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."))
        renames.append((f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2."))
        renames.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]

    converted = {}
    for key, value in vae.state_dict().items():
        if key in fixed:
            converted[fixed[key]] = value
            continue
        new_key = rename_prefix(key, renames).replace("conv_shortcut", "nin_shortcut")
        if ".attentions." in key:
            new_key = rename_parts(new_key, VAE_ATTENTION_NAMES)
            if value.ndim == 2:  # the original attention uses 1x1 convolutions
                value = value[:, :, None, None]
        converted[new_key] = value
    return converted


def clip_to_ldm(model: CLIPTextModel) -> dict[str, torch.Tensor]:
    """The first encoder keeps transformers' names (as `transformer.text_model.…`)."""
    return {
        key if key.startswith("text_model.") else f"text_model.{key}": value
        for key, value in model.state_dict().items()
        if not key.endswith("position_ids")
    }


def open_clip_to_ldm(model: CLIPTextModelWithProjection) -> dict[str, torch.Tensor]:
    state = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
    converted = {
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T,
    }
    state.pop("embeddings.position_ids", None)
    for index in range(model.config.num_hidden_layers):
        layer = f"encoder.layers.{index}."
        block = f"transformer.resblocks.{index}."
        for kind in ("weight", "bias"):  # OpenCLIP packs q, k, v into one projection
            converted[f"{block}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{layer}self_attn.{p}_proj.{kind}") for p in "qkv"]
            )
        for key in [k for k in state if k.startswith(layer)]:
            converted[block + rename_parts(key[len(layer) :], OPEN_CLIP_LAYER_NAMES)] = state.pop(
                key
            )
    if state:
        raise ValueError(f"Unexpected text encoder weights: {sorted(state)[:5]}")
    return converted


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in tensors.items()}
