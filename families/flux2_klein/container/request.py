"""The FLUX.2 [klein] container's generation inputs: FLUX.1's (Replicate's Flux predictor's:
aspect ratios, custom sizes in multiples of 16, LoRA scales that may be negative) with klein's
defaults, reference images to edit from (`images`, as Replicate's FLUX.2 [klein] model names
them) and the variant the deployment serves."""

from __future__ import annotations

from dataclasses import dataclass, field

from formats.input_ranges import one_of, ranged
from generation.request import FluxGenerationRequest

# served_variant(): the step-distilled model, or the base one (classifier-free guidance).
KLEIN_VARIANTS = ("distilled", "base")
# FLUX.2 generates up to 4 megapixels (2048x2048).
KLEIN_MIN_SIDE, KLEIN_MAX_SIDE = 256, 2048


@dataclass(frozen=True)
class KleinGenerationRequest(FluxGenerationRequest):
    """Defaults for the step-distilled model a deployment serves by default: 4 steps, no
    classifier-free guidance (the base variant wants about 50 steps and guidance 4)."""

    width: int | None = ranged(None, KLEIN_MIN_SIDE, KLEIN_MAX_SIDE)
    height: int | None = ranged(None, KLEIN_MIN_SIDE, KLEIN_MAX_SIDE)
    num_inference_steps: int = ranged(4, 1, 100)
    guidance_scale: float = ranged(1.0, 1.0, 10.0)
    model: str = one_of("distilled", KLEIN_VARIANTS)
    # Reference images to edit from (files, as `image`); Cog gives None for none.
    images: tuple | None = field(default=None, hash=False)

    def reference_images(self) -> tuple:
        return tuple(self.images or ())
