"""The SDXL safety checker: finds outputs flagged as potentially NSFW and drops them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import AutoImageProcessor

from weights.base_models import ModelUnavailableError
from weights.embedded.tiny_safety import ensure_tiny_safety_checker
from weights.runtime import Runtime
from weights.settings import TINY, HubSettings

# A safety-checker folder holds configs and safetensors weights at its root.
SAFETY_FILE_PATTERNS = ["*.json", "*.safetensors"]


class AllImagesFlaggedError(RuntimeError):
    """Every generated image was flagged; nothing can be returned."""


@dataclass(frozen=True)
class SafetyVerdict:
    kept: list[Image.Image]
    flagged: list[int]  # indices of the dropped images


def resolve_safety_checker(reference: str, cache_dir: Path) -> Path:
    """`tiny`, a local folder, or a Hugging Face repo id -> a local folder."""
    if reference == TINY:
        return ensure_tiny_safety_checker(cache_dir)
    path = Path(reference).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    hub = HubSettings.from_env()
    try:
        return Path(
            snapshot_download(
                reference,
                allow_patterns=SAFETY_FILE_PATTERNS,
                cache_dir=hub.cache_dir,
                local_files_only=hub.offline,
            )
        )
    except Exception as error:  # hub errors come in many types; all mean "not available"
        raise ModelUnavailableError(
            f"Could not fetch the safety checker {reference!r} ({type(error).__name__}). Set "
            "SAFETY_CHECKER_MODEL to a local folder, or `tiny` for the embedded test model."
        ) from None


class SafetyChecker:
    def __init__(self, folder: Path, runtime: Runtime):
        # safetensors only: never unpickle downloaded weights.
        self.model = StableDiffusionSafetyChecker.from_pretrained(
            folder, use_safetensors=True, dtype=runtime.dtype
        ).to(runtime.device)
        self.model.requires_grad_(False)
        self.processor = AutoImageProcessor.from_pretrained(folder)
        self.runtime = runtime

    def filter(self, images: list[Image.Image]) -> SafetyVerdict:
        clip_input = self.processor(images, return_tensors="pt").pixel_values
        clip_input = clip_input.to(self.runtime.device, self.runtime.dtype)
        arrays = [np.asarray(image) for image in images]
        _, flags = self.model(clip_input=clip_input, images=arrays)
        flagged = [index for index, flag in enumerate(flags) if flag]
        if flagged and len(flagged) == len(images):
            raise AllImagesFlaggedError(
                f"All {len(images)} generated image(s) were flagged as potentially NSFW by the "
                "safety checker. Try a different prompt or seed."
            )
        kept = [image for index, image in enumerate(images) if index not in flagged]
        return SafetyVerdict(kept, flagged)
