"""A tiny random-initialised SDXL safety checker (`StableDiffusionSafetyChecker`, CLIP vision
tower plus concept embeddings) with its image processor, saved as an ordinary
`from_pretrained` folder like the real `CompVis/stable-diffusion-safety-checker`.

Its concept thresholds are 1.0, above any cosine similarity, so it flags nothing until a test
lowers them; that keeps generation tests independent of the checker's random weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig, CLIPImageProcessorPil

from weights.embedded.tiny import build_folder_once

BUILD_VERSION = 1
IMAGE_SIZE = 32


def ensure_tiny_safety_checker(cache_dir: Path) -> Path:
    """Return the folder of the tiny safety checker, building it on first use."""
    target = Path(cache_dir) / f"tiny-safety-checker-v{BUILD_VERSION}"

    def save(folder: Path) -> None:
        build_tiny_safety_checker().save_pretrained(folder, safe_serialization=True)
        build_image_processor().save_pretrained(folder)

    return build_folder_once(target, "config.json", save)


def build_tiny_safety_checker() -> StableDiffusionSafetyChecker:
    torch.manual_seed(4)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=998,
            eos_token_id=999,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=8,
        ),
        projection_dim=16,
    )
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds.normal_()
        checker.special_care_embeds.normal_()
        checker.concept_embeds_weights.fill_(1.0)
        checker.special_care_embeds_weights.fill_(1.0)
    return checker


def build_image_processor() -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
