"""Trained-weights bundles for the predictor's tests, built here because the trainer is
written in parallel: a LoRA made with peft on the tiny models (random, non-zero lora_B so it
changes the output), saved the way diffusers saves LoRAs, plus the other layouts users bring."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils import convert_state_dict_to_kohya
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import save_file

from families import SDXL
from families.tiny_parts import TEXT_ENCODER_DIMS
from formats.bundle import EMBEDDINGS_PTI_FILE, LORA_FILE, SPECIAL_PARAMS_FILE, UNET_FILE

TOKEN_MAP = {"TOK": "<s0><s1>"}


def lora_state_dicts(base_folder: Path, seed: int, rank: int = 4, text_encoders: bool = True):
    """PEFT-layout LoRA tensors for the tiny base (UNet and, optionally, both text encoders),
    keyed per component as `save_lora_weights` expects."""
    pipe = StableDiffusionXLPipeline.from_pretrained(base_folder)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,  # alpha != rank, so a loader that ignores alpha is caught
        target_modules=list(SDXL.lora_target_modules),
        init_lora_weights="gaussian",
    )
    parts = {"unet_lora_layers": pipe.unet}
    if text_encoders:
        text_config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]
        )
        parts["text_encoder_lora_layers"] = pipe.text_encoder
        parts["text_encoder_2_lora_layers"] = pipe.text_encoder_2
    tensors, metadata = {}, {}
    for name, model in parts.items():
        model.add_adapter(config if name == "unet_lora_layers" else text_config)
        with torch.no_grad():  # peft starts lora_B at zero: make it change the output
            for key, param in model.named_parameters():
                if "lora_B" in key:
                    param.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed))
        tensors[name] = get_peft_model_state_dict(model)
        used = config if name == "unet_lora_layers" else text_config
        metadata[name.replace("_layers", "_adapter_metadata")] = used.to_dict()
    return tensors, metadata


def write_lora_bundle(base_folder: Path, folder: Path, seed: int, rank: int = 4):
    """This project's bundle layout: lora.safetensors (diffusers keys), embeddings.pti,
    special_params.json. Returns the folder."""
    folder.mkdir(parents=True)
    tensors, metadata = lora_state_dicts(base_folder, seed, rank=rank)
    StableDiffusionXLPipeline.save_lora_weights(
        folder, weight_name=LORA_FILE, **tensors, **metadata
    )
    write_tokens(folder, seed)
    return folder


def write_tokens(folder: Path, seed: int, widths=TEXT_ENCODER_DIMS) -> None:
    generator = torch.Generator().manual_seed(seed)
    save_file(
        {
            key: torch.randn(2, width, generator=generator)
            for key, width in zip(SDXL.pti_keys, widths, strict=True)
        },
        str(folder / EMBEDDINGS_PTI_FILE),
    )
    (folder / SPECIAL_PARAMS_FILE).write_text(json.dumps(TOKEN_MAP))


def write_kohya_lora(base_folder: Path, file: Path, seed: int) -> Path:
    tensors, _ = lora_state_dicts(base_folder, seed)
    peft_keys = {}
    for part, prefix in (
        ("unet_lora_layers", "unet"),
        ("text_encoder_lora_layers", "text_encoder"),
        ("text_encoder_2_lora_layers", "text_encoder_2"),
    ):
        peft_keys.update({f"{prefix}.{k}": v for k, v in tensors[part].items()})
    kohya = convert_state_dict_to_kohya(peft_keys)
    # kohya files carry alpha per module; the UNet LoRA above used alpha = 2 * rank.
    for key in list(kohya):
        if key.endswith(".alpha") and key.startswith("lora_unet"):
            kohya[key] = torch.tensor(2.0 * 4)
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(file))
    return file


def write_legacy_bundle(base_folder: Path, folder: Path, seed: int) -> Path:
    """The original Replicate SDXL trainer's layout: attention-processor keys without the
    `unet.` prefix (`...attn1.processor.to_q_lora.down.weight`), no alpha."""
    folder.mkdir(parents=True)
    tensors, _ = lora_state_dicts(base_folder, seed, text_encoders=False)
    legacy = {}
    for key, value in tensors["unet_lora_layers"].items():
        module, kind = key.rsplit(".lora_", 1)  # "...attn1.to_q", "A.weight"
        block, projection = module.rsplit(".", 1)
        if projection == "0":  # to_out.0
            block, projection = block.rsplit(".", 1)
        direction = "down" if kind.startswith("A") else "up"
        legacy[f"{block}.processor.{projection}_lora.{direction}.weight"] = value
    save_file({k: v.contiguous() for k, v in legacy.items()}, str(folder / LORA_FILE))
    write_tokens(folder, seed)
    return folder


def write_full_finetune_bundle(base_folder: Path, folder: Path, seed: int) -> Path:
    """unet.safetensors: every UNet weight, perturbed, plus tokens."""
    folder.mkdir(parents=True)
    pipe = StableDiffusionXLPipeline.from_pretrained(base_folder)
    generator = torch.Generator().manual_seed(seed)
    state = {
        k: v + 0.05 * torch.randn(v.shape, generator=generator)
        for k, v in pipe.unet.state_dict().items()
    }
    save_file(state, str(folder / UNET_FILE))
    write_tokens(folder, seed)
    return folder


def tar_folder(folder: Path) -> Path:
    archive = folder.with_suffix(".tar")
    with tarfile.open(archive, "w") as tar:
        for file in sorted(folder.iterdir()):
            tar.add(file, arcname=file.name)
    return archive


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """A tar (as bytes) of the given member names and contents."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
