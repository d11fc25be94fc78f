"""The toy base (`BASE_MODEL=toy`): the tiny SDXL with a VAE and UNet pretrained on the toy world.

Only the trained parts ship (fp16 safetensors under weights/embedded/toy_weights/, retrained
by `make toy-base`); the tiny text encoders, tokenizers and scheduler are rebuilt
deterministically, and the whole pipeline folder is assembled once in the cache, under a
name that changes with the shipped weights.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel

from families.sdxl.tiny import build_tiny_sdxl
from weights.embedded.tiny import build_folder_once

TOY_WEIGHTS_DIR = Path(__file__).resolve().parent / "toy_weights"
TOY_PARTS = {"vae": AutoencoderKL, "unet": UNet2DConditionModel}
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def ensure_toy_model(role: str, cache_dir: Path) -> Path:
    """Return the folder of the toy base pipeline, assembling it on first use."""
    if role != "base":
        raise ValueError(
            f"The toy base has no {role!r} model: use REFINER_MODEL=tiny (or no refiner)."
        )
    missing = [p for p in TOY_PARTS if not (TOY_WEIGHTS_DIR / p / WEIGHTS_NAME).is_file()]
    if missing:
        raise FileNotFoundError(
            f"The toy base's {' and '.join(missing)} weights are missing from {TOY_WEIGHTS_DIR}: "
            "run `make toy-base` to train them."
        )
    target = Path(cache_dir) / f"toy-sdxl-base-{weights_digest(toy_part_folders())}"

    def save(folder: Path) -> None:
        tiny = build_tiny_sdxl("base")
        parts = {
            name: model_class.from_pretrained(TOY_WEIGHTS_DIR / name, dtype=torch.float32)
            for name, model_class in TOY_PARTS.items()
        }
        toy_pipeline(tiny, **parts).save_pretrained(folder, safe_serialization=True)

    return build_folder_once(target, "model_index.json", save)


def toy_pipeline(tiny: StableDiffusionXLPipeline, vae, unet) -> StableDiffusionXLPipeline:
    """The tiny pipeline with the toy VAE and UNet. Its unconditional prompt is the encoded
    empty caption the UNet learnt through caption dropout, not SDXL's zeroed embeddings."""
    components = {**tiny.components, "vae": vae, "unet": unet}
    return StableDiffusionXLPipeline(**components, force_zeros_for_empty_prompt=False)


def save_toy_part(model, name: str, weights_dir: Path = TOY_WEIGHTS_DIR) -> Path:
    """Store a trained VAE or UNet in fp16 under `weights_dir`/<name>/ (written beside and
    renamed, so an interrupted save leaves the previous weights intact)."""
    folder = Path(weights_dir) / name
    staging = folder.with_name(f".{name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    copy.deepcopy(model).to(torch.float16).save_pretrained(staging, safe_serialization=True)
    if folder.exists():
        old = folder.with_name(f".{name}.old")
        folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(folder)
    return folder


def toy_part_folders() -> list[Path]:
    return [TOY_WEIGHTS_DIR / name for name in sorted(TOY_PARTS)]


def weights_digest(folders: list[Path]) -> str:
    """A short hash of the files in `folders` (a toy model's shipped parts): the cache name of
    an assembled toy model changes with its weights."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]
