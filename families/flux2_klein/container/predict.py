"""Cog predictor of the FLUX.2 [klein] container: declares the inputs (Replicate's FLUX.2
[klein] model's `images` for editing, with the Flux predictor's sizes and LoRA inputs; each
default and range lives on its `KleinGenerationRequest` field) and hands each request to the
same generation engine as the other containers."""

import weights.quiet  # noqa: F401 (first: keeps libraries' import-time noise out of logs)

# isort: split
import logging
from typing import List, Optional

from cog import BasePredictor, Path

import serving.cog_files  # noqa: F401  (Cog's file downloads are ours: see there)
from families.flux2_klein import KLEIN
from families.flux2_klein.container.request import KleinGenerationRequest
from generation.engine import GenerationEngine
from serving.handoff import OutputHandoff
from serving.inputs import declared
from weights.settings import ModelSettings

logging.basicConfig(level=logging.INFO, format="%(message)s")


def _input(name: str, description: str):
    return declared(KleinGenerationRequest, name, description)


class Predictor(BasePredictor):
    def setup(self, weights: Optional[str] = None) -> None:
        # `weights` is COG_WEIGHTS: a trained version's bundle, the default for every request.
        self.engine = GenerationEngine(ModelSettings.from_env(KLEIN), default_weights=weights)
        self.outputs = OutputHandoff("klein-tuner-outputs-")

    def predict(
        self,
        prompt: str = _input(
            "prompt",
            "Prompt for generated image, or the edit to make to the input images. Include the "
            "`trigger_word` used in training to bring in the trained subject or style",
        ),
        images: Optional[List[Path]] = _input(
            "images",
            "Reference images to edit from or combine (at most 5; jpeg, png, gif or webp). The "
            "output takes aspect_ratio's size",
        ),
        image: Optional[Path] = _input(
            "image",
            "An image to edit (alone: the output keeps its size) or, with a mask, to inpaint; "
            "`images` then condition the inpainted area",
        ),
        mask: Optional[Path] = _input(
            "mask", "Mask for inpainting `image`: black areas are kept, white areas repainted."
        ),
        aspect_ratio: str = _input(
            "aspect_ratio",
            "Aspect ratio for the generated image. If custom is selected, uses height and "
            "width below",
        ),
        height: Optional[int] = _input(
            "height",
            "Height of generated image. Only works if `aspect_ratio` is set to custom. Will be "
            "rounded to nearest multiple of 16",
        ),
        width: Optional[int] = _input(
            "width",
            "Width of generated image. Only works if `aspect_ratio` is set to custom. Will be "
            "rounded to nearest multiple of 16",
        ),
        num_outputs: int = _input("num_outputs", "Number of images to output."),
        lora_scale: float = _input(
            "lora_scale", "How strongly the main LoRA is applied. Sane results between 0 and 1."
        ),
        num_inference_steps: int = _input(
            "num_inference_steps",
            "Number of denoising steps: about 4 for the distilled model, 50 for the base one",
        ),
        model: str = _input(
            "model",
            "Which variant runs: the step-distilled FLUX.2 [klein] or its base (the "
            "deployment serves one of them)",
        ),
        guidance_scale: float = _input(
            "guidance_scale",
            "Classifier-free guidance of the base variant (about 4); the distilled one ignores it",
        ),
        prompt_strength: float = _input(
            "prompt_strength",
            "Inpainting strength. 1.0 repaints the masked area from scratch",
        ),
        seed: Optional[int] = _input("seed", "Random seed. Set for reproducible generation"),
        extra_lora: Optional[str] = _input(
            "extra_lora",
            "Combine this fine-tune with another LoRA, by URL: a bundle or a FLUX.2 [klein] "
            "LoRA .safetensors in diffusers, BFL/kohya or ai-toolkit layout.",
        ),
        extra_lora_scale: float = _input(
            "extra_lora_scale", "Determines how strongly the extra LoRA should be applied."
        ),
        replicate_weights: Optional[str] = _input(
            "replicate_weights",
            "Trained weights (a URL of a trained_model.tar) to use instead of the default ones",
        ),
        output_format: str = _input("output_format", "Format of the output images"),
        output_quality: int = _input(
            "output_quality",
            "Quality when saving the output images, from 0 to 100. 100 is best quality, 0 is "
            "lowest quality. Not relevant for .png outputs",
        ),
        disable_safety_checker: bool = _input(
            "disable_safety_checker", "Disable safety checker for generated images."
        ),
    ) -> List[Path]:
        request = KleinGenerationRequest(**{k: v for k, v in locals().items() if k != "self"})
        result = self.engine.generate(request, self.outputs.next_folder())
        return [Path(path) for path in result.paths]
