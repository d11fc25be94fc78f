"""Write trained weights in every layout the bundle promises (docs/weights-tarball.md), with the key
names of the base model's family (`families.py`):

- `lora.safetensors`: diffusers/PEFT keys (`unet.….lora_A.weight`, `text_encoder.…`), with the
  adapter config (rank, alpha) in the file's metadata so `load_lora_weights` applies alpha;
- `lora_kohya.safetensors`: kohya keys (SDXL `lora_unet_…`, `lora_te1_…`, `lora_te2_…`;
  SD 1.5 `lora_unet_…`, `lora_te_…`) with a `.alpha` per module (A1111, ComfyUI); for FLUX.1
  the BFL names (`lora_unet_double_blocks_0_img_attn_qkv`, training/bfl_export.py);
- `embeddings.pti` (Replicate's layout: `text_encoders_0`, `text_encoders_1`),
  `embeddings.safetensors` (A1111 / ComfyUI: SDXL `clip_l` / `clip_g`, SD 1.5 `emb_params`),
  and `special_params.json` (the token map);
- `unet.safetensors` for full fine-tunes.
"""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import torch
from diffusers.utils import convert_state_dict_to_kohya
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from families import ModelFamily
from formats.bundle import (
    EMBEDDINGS_FILE,
    EMBEDDINGS_PTI_FILE,
    LORA_FILE,
    LORA_KOHYA_FILE,
    SPECIAL_PARAMS_FILE,
    TEXT_MODEL,
    UNET_FILE,
)
from formats.tokens import TokenEmbeddingsHandler
from training.bfl_export import UnmappableModulesError, to_bfl_kohya
from training.components import TrainingComponents
from training.config import TrainingConfig

# The kohya prefixes diffusers' converter writes (SDXL's); mapped to the family's own.
DIFFUSERS_KOHYA_PREFIXES = ("lora_unet", "lora_te1", "lora_te2")


def save_trained_weights(
    folder: Path,
    config: TrainingConfig,
    models: TrainingComponents,
    handler: TokenEmbeddingsHandler | None,
    token_map: dict[str, str],
    dtype: torch.dtype,
) -> None:
    """Write what `config` trains, as the models hold it now, into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    family = models.family
    if config.trains_unet_lora or config.train_text_encoder:
        save_lora(
            folder,
            family,
            models.denoiser if config.trains_unet_lora else None,
            models.named_text_encoders() if config.train_text_encoder else {},
            dtype,
        )
        if family.kohya_layout == "bfl":
            save_bfl_lora(folder, models.denoiser, config.effective_lora_alpha)
        else:
            save_kohya_lora(
                folder / LORA_FILE, folder / LORA_KOHYA_FILE, family, config.effective_lora_alpha
            )
    if config.trains_full_unet:
        state = {k: v.to(dtype).contiguous() for k, v in models.denoiser.state_dict().items()}
        save_file(state, str(folder / UNET_FILE))
    if handler is not None:
        save_embeddings(folder, handler, family)
    (folder / SPECIAL_PARAMS_FILE).write_text(json.dumps(token_map))


def save_lora(folder: Path, family: ModelFamily, denoiser, text_encoders: dict, dtype) -> None:
    """`denoiser`: the UNet or transformer carrying a LoRA, or None to leave it out;
    `text_encoders`: the text encoders carrying one, by component name. Saved by the family
    pipeline's own saver (keys `unet.…` / `transformer.…`, `text_encoder.…`)."""
    parts = {family.denoiser: denoiser, **text_encoders}
    arguments = {}
    for name, model in parts.items():
        if model is not None:
            state = get_peft_model_state_dict(model)
            if name != family.denoiser and not hasattr(model, TEXT_MODEL):
                # transformers 5 flattened CLIPTextModel; A1111, ComfyUI and older diffusers
                # know its modules as `text_model.encoder.…` (kohya: `lora_te_text_model_…`).
                state = {f"{TEXT_MODEL}.{k}": v for k, v in state.items()}
            arguments[f"{name}_lora_layers"] = {k: v.to(dtype) for k, v in state.items()}
            arguments[f"{name}_lora_adapter_metadata"] = model.peft_config["default"].to_dict()
    pipeline_class = getattr(diffusers, family.txt2img_pipeline)
    pipeline_class.save_lora_weights(folder, weight_name=LORA_FILE, **arguments)


def save_kohya_lora(
    lora_file: Path, kohya_file: Path, family: ModelFamily, lora_alpha: float
) -> None:
    """Convert the PEFT-layout file to kohya keys with the family's prefixes. diffusers writes
    `.alpha` = rank (scale 1); the real alpha is written instead, so alpha/rank scaling
    survives in every loader."""
    prefixes = dict(
        zip(
            DIFFUSERS_KOHYA_PREFIXES,
            (family.kohya_unet_prefix, *family.kohya_text_encoder_prefixes),
            strict=False,
        )
    )
    kohya = {}
    for key, value in convert_state_dict_to_kohya(load_file(str(lora_file))).items():
        written = next((p for p in prefixes if key.startswith(f"{p}_")), None)
        assert written is not None, f"unexpected kohya key {key}"
        kohya[prefixes[written] + key.removeprefix(written)] = value
    for key in kohya:
        if key.endswith(".alpha"):
            kohya[key] = torch.tensor(float(lora_alpha))
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(kohya_file))


def save_bfl_lora(folder: Path, transformer, lora_alpha: float) -> None:
    """The Flux transformer's LoRA (`lora.safetensors`) in BFL / kohya naming, for ComfyUI and
    Forge. Modules outside the blocks have no place there: the file is then left out."""
    widths = {  # PEFT wraps each trained layer: its linear is `<name>.base_layer`
        f"transformer.{name.removesuffix('.base_layer')}": module.out_features
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    try:
        tensors = to_bfl_kohya(load_file(str(folder / LORA_FILE)), lora_alpha, widths)
    except UnmappableModulesError as error:
        print(f"No {LORA_KOHYA_FILE}: {error} Use {LORA_FILE} (diffusers, ComfyUI).")
        return
    save_file(tensors, str(folder / LORA_KOHYA_FILE))


def save_embeddings(folder: Path, handler: TokenEmbeddingsHandler, family: ModelFamily) -> None:
    handler.save_embeddings(folder / EMBEDDINGS_PTI_FILE)
    vectors = handler.token_vectors()
    save_file(
        {family.embedding_keys[index]: v.contiguous() for index, v in vectors.items()},
        str(folder / EMBEDDINGS_FILE),
    )
