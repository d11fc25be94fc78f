"""What a trained-weights reference turned out to be, once it is on local disk.

The file names of the weights tarball live here (one fact, one place): the trainer writes
them, the store and the predictor read them.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

# The weights tarball (see DESIGN.md).
LORA_FILE = "lora.safetensors"
LORA_KOHYA_FILE = "lora_kohya.safetensors"
UNET_FILE = "unet.safetensors"
EMBEDDINGS_PTI_FILE = "embeddings.pti"
EMBEDDINGS_FILE = "embeddings.safetensors"
SPECIAL_PARAMS_FILE = "special_params.json"
TRAINING_CONFIG_FILE = "training_config.json"
MODEL_CARD_FILE = "README.md"
PREVIEW_FILE = "preview.png"
LOSS_PLOT_FILE = "loss.png"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
CHECKPOINTS_DIR = "checkpoints"
BUNDLE_FILE = "trained_model.tar"


class WeightsFormat(enum.Enum):
    BUNDLE = "bundle"  # this project's tarball
    REPLICATE_LEGACY = "replicate_legacy"  # the original Replicate SDXL trainer's tarball
    LORA_DIFFUSERS = "lora_diffusers"  # a bare LoRA, diffusers/PEFT keys
    LORA_KOHYA = "lora_kohya"  # a bare LoRA, kohya keys


class UnrecognisedWeightsError(ValueError):
    """The files are not trained weights in any supported layout."""


@dataclass(frozen=True)
class TrainedWeights:
    source: str  # what the user passed (URL or path), for messages
    format: WeightsFormat
    lora: Path | None = None
    unet: Path | None = None  # full fine-tunes
    embeddings_pti: Path | None = None
    token_map: dict[str, str] | None = None  # special_params.json, e.g. {"TOK": "<s0><s1>"}
    training_config: Path | None = None


def inspect_weights(path: Path, source: str | None = None) -> TrainedWeights:
    """Describe an unpacked bundle folder or a single LoRA `.safetensors` file."""
    path = Path(path)
    source = source or str(path)
    if path.is_file():
        return TrainedWeights(source, lora_key_format(path), lora=path)
    if not path.is_dir():
        raise UnrecognisedWeightsError(f"{source}: no such file or folder.")
    folder = _bundle_root(path)

    def optional(name: str) -> Path | None:
        return folder / name if (folder / name).is_file() else None

    lora, unet = optional(LORA_FILE), optional(UNET_FILE)
    if lora is None and unet is None and optional(EMBEDDINGS_PTI_FILE) is None:
        raise UnrecognisedWeightsError(
            f"{source} holds none of {LORA_FILE}, {UNET_FILE} or {EMBEDDINGS_PTI_FILE}: "
            "it is not a trained-weights bundle."
        )
    special = optional(SPECIAL_PARAMS_FILE)
    legacy = lora is not None and lora_key_format(lora) is WeightsFormat.REPLICATE_LEGACY
    return TrainedWeights(
        source=source,
        format=WeightsFormat.REPLICATE_LEGACY if legacy else WeightsFormat.BUNDLE,
        lora=lora,
        unet=unet,
        embeddings_pti=optional(EMBEDDINGS_PTI_FILE),
        token_map=json.loads(special.read_text()) if special else None,
        training_config=optional(TRAINING_CONFIG_FILE),
    )


def lora_key_format(file: Path) -> WeightsFormat:
    """Which key layout a LoRA safetensors file uses, judged from its keys."""
    try:
        with safe_open(str(file), framework="pt") as tensors:
            keys = list(tensors.keys())
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise UnrecognisedWeightsError(
            f"{file.name} is not a readable safetensors file: {error}"
        ) from None
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        return WeightsFormat.LORA_KOHYA
    if any("_lora.down." in k or "_lora.up." in k for k in keys):
        return WeightsFormat.REPLICATE_LEGACY
    if any(".lora_A." in k or ".lora.down." in k or ".lora_down." in k for k in keys):
        return WeightsFormat.LORA_DIFFUSERS
    raise UnrecognisedWeightsError(f"{file.name} has no LoRA keys in a known layout.")


def _bundle_root(folder: Path) -> Path:
    """Tarballs made by hand often wrap everything in one top-level folder."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder
