"""Write trained weights in every layout the bundle promises (docs/weights-tarball.md), with the key
names of the base model's family (`families.py`):

- `lora.safetensors`: diffusers/PEFT keys (`unet.….lora_A.weight`, `text_encoder.…`), with the
  adapter config (rank, alpha) in the file's metadata so `load_lora_weights` applies alpha;
- `lora_kohya.safetensors`: kohya keys (SDXL `lora_unet_…`, `lora_te1_…`, `lora_te2_…`;
  SD 1.5 `lora_unet_…`, `lora_te_…`) with a `.alpha` per module (A1111, ComfyUI), a DoRA's
  magnitudes as LyCORIS's `.dora_scale` and a LoKr's factors as `.lokr_w1`, `.lokr_w2_a`, …;
  for FLUX.1 the BFL names (`lora_unet_double_blocks_0_img_attn_qkv`, training/bfl_export.py);
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
from training.bfl_export import UnmappableModulesError, to_bfl_kohya
from training.components import TrainingComponents
from training.config import TrainingConfig

# peft's key of a part in lora.safetensors -> kohya's (LoKr's parts keep their names).
KOHYA_PARTS = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora_magnitude_vector": "dora_scale",
}


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
            save_kohya_lora(folder / LORA_FILE, folder / LORA_KOHYA_FILE, family)
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


def save_kohya_lora(lora_file: Path, kohya_file: Path, family: ModelFamily) -> None:
    """The PEFT-layout file with kohya keys: each module `<component>.<path>` as
    `<the family's prefix>_<path with _ for .>`, peft's parts by kohya's names, the alpha of
    the module's adapter (from the file's metadata; diffusers' converter would write the rank)
    as `.alpha`, and a DoRA magnitude as one per output row (`[out, 1]`, LyCORIS's
    `wd_on_out`)."""
    prefixes = {
        family.denoiser: family.kohya_unet_prefix,
        **dict(zip(family.text_encoder_names, family.kohya_text_encoder_prefixes, strict=False)),
    }
    tensors = load_file(str(lora_file))
    with safe_open(str(lora_file), framework="pt") as opened:
        configs = json.loads(opened.metadata()[LORA_ADAPTER_METADATA_KEY])
    kohya = {}
    for key, value in tensors.items():
        component, _, rest = key.partition(".")
        cut = 2 if rest.endswith(".weight") else 1  # `.lora_A.weight`, `.lokr_w1`
        module, part = ".".join(rest.split(".")[:-cut]), ".".join(rest.split(".")[-cut:])
        name = f"{prefixes[component]}_{module.replace('.', '_')}"
        if part == "lora_magnitude_vector":
            weight_dims = tensors[f"{component}.{module}.lora_A.weight"].ndim
            value = value.reshape(-1, *[1] * (weight_dims - 1))
        kohya[f"{name}.{KOHYA_PARTS.get(part, part)}"] = value.contiguous()
        alpha = configs.get(f"{component}.lora_alpha", configs.get(f"{component}.alpha"))
        kohya[f"{name}.alpha"] = torch.tensor(float(alpha))
    save_file(kohya, str(kohya_file))


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
