"""Write trained weights in every layout the bundle promises (docs/weights-tarball.md), with the key
names of the base model's family (`families/`):

- `lora.safetensors`: diffusers/PEFT keys (`unet.….lora_A.weight`, `text_encoder.…`), with the
  adapter config (rank, alpha) in the file's metadata so `load_lora_weights` applies alpha;
- `lora_kohya.safetensors`: the names other tools load, the family's (`ModelFamily.
  kohya_lora`): kohya keys for the UNet families (`lora_unet_…`, `lora_te1_…`; a DoRA's
  magnitudes as LyCORIS's `.dora_scale`, a LoKr's factors as `.lokr_w1`, …), BFL's for
  FLUX.1 (`lora_unet_double_blocks_0_img_attn_qkv`);
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
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
from peft import LoKrConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
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
from training.components import TrainingComponents
from training.config import TrainingConfig


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
        save_kohya_lora(folder / LORA_FILE, folder / LORA_KOHYA_FILE, family, models.denoiser)
    if config.trains_full_unet:
        state = {k: v.to(dtype).contiguous() for k, v in models.denoiser.state_dict().items()}
        save_file(state, str(folder / UNET_FILE))
    if handler is not None:
        save_embeddings(folder, handler, family)
    (folder / SPECIAL_PARAMS_FILE).write_text(json.dumps(token_map))


def save_lora(folder: Path, family: ModelFamily, denoiser, text_encoders: dict, dtype) -> None:
    """`denoiser`: the UNet or transformer carrying a LoRA, or None to leave it out;
    `text_encoders`: the text encoders carrying one, by component name. Saved by the family
    pipeline's own saver (keys `unet.…` / `transformer.…`, `text_encoder.…`), with each
    adapter's peft config in the metadata."""
    parts = {family.denoiser: denoiser, **text_encoders}
    arguments = {}
    for name, model in parts.items():
        if model is not None:
            state = get_peft_model_state_dict(model)
            config = model.peft_config["default"]
            if isinstance(config, LoKrConfig):
                state, config = _lokr_scale_folded(state, config)
            if name != family.denoiser and not hasattr(model, TEXT_MODEL):
                # transformers 5 flattened CLIPTextModel; A1111, ComfyUI and older diffusers
                # know its modules as `text_model.encoder.…` (kohya: `lora_te_text_model_…`).
                state = {f"{TEXT_MODEL}.{k}": v for k, v in state.items()}
            arguments[f"{name}_lora_layers"] = {k: v.to(dtype) for k, v in state.items()}
            arguments[f"{name}_lora_adapter_metadata"] = config.to_dict()
    pipeline_class = getattr(diffusers, family.txt2img_pipeline)
    pipeline_class.save_lora_weights(folder, weight_name=LORA_FILE, **arguments)


def _lokr_scale_folded(state: dict, config: LoKrConfig) -> tuple[dict, LoKrConfig]:
    """A LoKr with peft's alpha/r folded into w1 and alpha = r. peft scales a LoKr by alpha/r
    always, LyCORIS and ComfyUI only when a factor is decomposed: at scale 1 they agree."""
    scale = config.alpha / config.r
    folded = {
        k: v * scale if k.endswith((".lokr_w1", ".lokr_w1_a")) else v for k, v in state.items()
    }
    return folded, LoKrConfig(**{**config.to_dict(), "alpha": config.r})


def save_kohya_lora(lora_file: Path, kohya_file: Path, family: ModelFamily, denoiser) -> None:
    """`lora_file`'s LoRA in the names other tools load (the family's), with each module's
    alpha from the file's adapter metadata. A LoRA those names cannot express (modules the
    tools have no place for) leaves the file out, saying so."""
    with safe_open(str(lora_file), framework="pt") as opened:
        adapters = json.loads(opened.metadata()[LORA_ADAPTER_METADATA_KEY])
    try:
        tensors = family.kohya_lora(load_file(str(lora_file)), adapters, denoiser)
    except ValueError as error:
        print(f"No {kohya_file.name}: {error} Use {lora_file.name} (diffusers, ComfyUI).")
        return
    save_file(tensors, str(kohya_file))


def save_embeddings(folder: Path, handler: TokenEmbeddingsHandler, family: ModelFamily) -> None:
    handler.save_embeddings(folder / EMBEDDINGS_PTI_FILE)
    vectors = handler.token_vectors()
    save_file(
        {family.embedding_keys[index]: v.contiguous() for index, v in vectors.items()},
        str(folder / EMBEDDINGS_FILE),
    )
