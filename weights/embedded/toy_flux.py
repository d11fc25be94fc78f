"""The toy FLUX.1 (`BASE_MODEL=toy-flux`): the tiny FLUX.1 with the toy base's VAE and a
transformer pretrained on the toy world.

Only the transformer ships (fp16 safetensors under weights/embedded/toy_flux_weights/,
retrained by `make toy-flux-base`), with `vae.json`: how the toy VAE (shared with the toy SDXL,
weights/embedded/toy_weights/vae/) normalises its latents for FLUX.1's pipeline and at which
image size the transformer learnt. The tiny CLIP and T5 encoders, tokenizers and scheduler
are rebuilt deterministically, and the pipeline folder is assembled once in the cache, under a
name that changes with the shipped files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel

from families.flux1.tiny import build_tiny_flux
from weights.embedded.tiny import build_folder_once
from weights.embedded.toy import TOY_WEIGHTS_DIR, weights_digest

TOY_FLUX_WEIGHTS_DIR = Path(__file__).resolve().parent / "toy_flux_weights"
TRANSFORMER = "transformer"
VAE_SETTINGS = "vae.json"  # scaling_factor, shift_factor and sample_size of the toy VAE
TOY_VAE_DIR = TOY_WEIGHTS_DIR / "vae"


def ensure_toy_flux_model(role: str, cache_dir: Path) -> Path:
    """Return the folder of the toy FLUX.1 pipeline, assembling it on first use."""
    if role != "base":
        raise ValueError(f"The toy FLUX.1 has no {role!r} model (FLUX.1 has no refiner).")
    weights_dir = TOY_FLUX_WEIGHTS_DIR
    if not (weights_dir / TRANSFORMER).is_dir() or not (weights_dir / VAE_SETTINGS).is_file():
        raise FileNotFoundError(
            f"The toy FLUX.1's transformer weights are missing from {weights_dir}: run "
            "`make toy-flux-base` to train them."
        )
    digest = weights_digest([weights_dir / TRANSFORMER, weights_dir, TOY_VAE_DIR])
    target = Path(cache_dir) / f"toy-flux-base-{digest}"

    def save(folder: Path) -> None:
        transformer = FluxTransformer2DModel.from_pretrained(
            weights_dir / TRANSFORMER, dtype=torch.float32
        )
        pipeline = toy_flux_pipeline(toy_flux_vae(weights_dir / VAE_SETTINGS), transformer)
        pipeline.save_pretrained(folder, safe_serialization=True)

    return build_folder_once(target, "model_index.json", save)


def toy_flux_vae(settings_file: Path) -> AutoencoderKL:
    """The toy base's VAE with the toy FLUX.1's latent normalisation and image size."""
    vae = AutoencoderKL.from_pretrained(TOY_VAE_DIR, dtype=torch.float32)
    vae.register_to_config(**json.loads(settings_file.read_text()))
    return vae


def toy_flux_pipeline(vae: AutoencoderKL, transformer: FluxTransformer2DModel) -> FluxPipeline:
    """The tiny FLUX.1's text encoders, tokenizers and scheduler with the toy parts."""
    components = {**build_tiny_flux().components, "vae": vae, "transformer": transformer}
    return FluxPipeline(**components)
