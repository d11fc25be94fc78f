"""Write trained weights in every layout the bundle promises (see DESIGN.md):

- `lora.safetensors`: diffusers/PEFT keys (`unet.….lora_A.weight`, `text_encoder.…`), with the
  adapter config (rank, alpha) in the file's metadata so `load_lora_weights` applies alpha;
- `lora_kohya.safetensors`: kohya keys (`lora_unet_…`, `lora_te1_…`, `lora_te2_…`) with a
  `.alpha` per module (A1111, ComfyUI);
- `embeddings.pti` (Replicate's layout), `embeddings.safetensors` (clip_l / clip_g), and
  `special_params.json` (the token map);
- `unet.safetensors` for full fine-tunes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils import convert_state_dict_to_kohya
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from dataset_and_utils import TokenEmbeddingsHandler
from families import SDXL
from training.config import TrainingConfig
from weights.trained import (
    EMBEDDINGS_FILE,
    EMBEDDINGS_PTI_FILE,
    LORA_FILE,
    LORA_KOHYA_FILE,
    SPECIAL_PARAMS_FILE,
    UNET_FILE,
)


def save_trained_weights(
    folder: Path,
    config: TrainingConfig,
    unet,
    text_encoders: list,
    handler: TokenEmbeddingsHandler | None,
    token_map: dict[str, str],
    dtype: torch.dtype,
) -> None:
    """Write what `config` trains, as the models hold it now, into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    if config.trains_unet_lora or config.train_text_encoder:
        save_lora(
            folder,
            unet if config.trains_unet_lora else None,
            text_encoders if config.train_text_encoder else [None, None],
            dtype,
        )
        save_kohya_lora(folder / LORA_FILE, folder / LORA_KOHYA_FILE, config.effective_lora_alpha)
    if config.trains_full_unet:
        state = {name: tensor.to(dtype).contiguous() for name, tensor in unet.state_dict().items()}
        save_file(state, str(folder / UNET_FILE))
    if handler is not None:
        save_embeddings(folder, handler)
    (folder / SPECIAL_PARAMS_FILE).write_text(json.dumps(token_map))


def save_lora(folder: Path, unet, text_encoders: list, dtype: torch.dtype) -> None:
    """`unet` / each text encoder: the model carrying a LoRA, or None to leave it out."""

    def layers(model):
        if model is None:
            return None
        return {k: v.to(dtype) for k, v in get_peft_model_state_dict(model).items()}

    def metadata(model):
        return model.peft_config["default"].to_dict() if model is not None else None

    encoders = text_encoders
    StableDiffusionXLPipeline.save_lora_weights(
        folder,
        unet_lora_layers=layers(unet),
        text_encoder_lora_layers=layers(encoders[0]),
        text_encoder_2_lora_layers=layers(encoders[1]),
        unet_lora_adapter_metadata=metadata(unet),
        text_encoder_lora_adapter_metadata=metadata(encoders[0]),
        text_encoder_2_lora_adapter_metadata=metadata(encoders[1]),
        weight_name=LORA_FILE,
    )


def save_kohya_lora(lora_file: Path, kohya_file: Path, lora_alpha: float) -> None:
    """Convert the PEFT-layout file to kohya keys. diffusers writes `.alpha` = rank (scale 1);
    the real alpha is written instead, so alpha/rank scaling survives in every loader."""
    kohya = convert_state_dict_to_kohya(load_file(str(lora_file)))
    prefixes = (SDXL.kohya_unet_prefix, *SDXL.kohya_text_encoder_prefixes)
    assert all(key.startswith(prefixes) for key in kohya), "unexpected kohya key prefix"
    for key in kohya:
        if key.endswith(".alpha"):
            kohya[key] = torch.tensor(float(lora_alpha))
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(kohya_file))


def save_embeddings(folder: Path, handler: TokenEmbeddingsHandler) -> None:
    handler.save_embeddings(folder / EMBEDDINGS_PTI_FILE)
    vectors = handler.token_vectors()
    save_file(
        {SDXL.embedding_keys[index]: v.contiguous() for index, v in vectors.items()},
        str(folder / EMBEDDINGS_FILE),
    )
