"""Cog predictor of the FLUX.1 container: declares the inputs (names, defaults and ranges of
Replicate's Flux LoRA predictor; each lives on its `FluxGenerationRequest` field) and hands
each request to the same generation engine as the SDXL container."""

import weights.quiet  # noqa: F401 (first: keeps libraries' import-time noise out of logs)

# isort: split
import logging

from cog import BasePredictor, Path

import serving.cog_files  # noqa: F401  (Cog's file downloads are ours: see there)
from families import FLUX
from generation.engine import GenerationEngine
from generation.request import FluxGenerationRequest
from serving.handoff import OutputHandoff
from serving.inputs import declared
from weights.settings import ModelSettings

logging.basicConfig(level=logging.INFO, format="%(message)s")


def _input(name: str, description: str):
    return declared(FluxGenerationRequest, name, description)


class Predictor(BasePredictor):
    def setup(self, weights: str | None = None) -> None:
        # `weights` is COG_WEIGHTS: a trained version's bundle, the default for every request.
        self.engine = GenerationEngine(ModelSettings.from_env(FLUX), default_weights=weights)
        self.outputs = OutputHandoff("flux-tuner-outputs-")

    def predict(
        self,
        prompt: str = _input(
            "prompt",
            "Prompt for generated image. If you include the `trigger_word` used in the training "
            "process you are more likely to activate the trained object, style, or concept",
        ),
        image: Path | None = _input(
            "image",
            "Input image for image to image or inpainting mode. If provided, aspect_ratio, "
            "width, and height inputs are ignored.",
        ),
        mask: Path | None = _input(
            "mask",
            "Image mask for image inpainting mode. If provided, aspect_ratio, width, and height "
            "inputs are ignored. Black areas are kept, white areas repainted.",
        ),
        aspect_ratio: str = _input(
            "aspect_ratio",
            "Aspect ratio for the generated image. If custom is selected, uses height and "
            "width below & will run in bf16 mode",
        ),
        height: int | None = _input(
            "height",
            "Height of generated image. Only works if `aspect_ratio` is set to custom. Will be "
            "rounded to nearest multiple of 16. Incompatible with fast generation",
        ),
        width: int | None = _input(
            "width",
            "Width of generated image. Only works if `aspect_ratio` is set to custom. Will be "
            "rounded to nearest multiple of 16. Incompatible with fast generation",
        ),
        num_outputs: int = _input("num_outputs", "Number of images to output."),
        lora_scale: float = _input(
            "lora_scale",
            "Determines how strongly the main LoRA should be applied. Sane results between 0 "
            "and 1.",
        ),
        num_inference_steps: int = _input(
            "num_inference_steps",
            "Number of inference steps. More steps can give more detailed images, but take longer.",
        ),
        model: str = _input(
            "model",
            "Which model to run inferences with. The dev model needs around 28 steps but the "
            "schnell model only needs around 4 steps (the deployment serves one of them).",
        ),
        guidance_scale: float = _input(
            "guidance_scale",
            "Guidance scale for the diffusion process (FLUX.1's distilled guidance)",
        ),
        prompt_strength: float = _input(
            "prompt_strength",
            "Prompt strength when using img2img / inpaint. 1.0 corresponds to full destruction "
            "of information in image",
        ),
        seed: int | None = _input("seed", "Random seed. Set for reproducible generation"),
        extra_lora: str | None = _input(
            "extra_lora",
            "Combine this fine-tune with another LoRA, by URL: a bundle or a Flux LoRA "
            ".safetensors in diffusers or BFL/kohya layout.",
        ),
        extra_lora_scale: float = _input(
            "extra_lora_scale", "Determines how strongly the extra LoRA should be applied."
        ),
        replicate_weights: str | None = _input(
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
    ) -> list[Path]:
        request = FluxGenerationRequest(**{k: v for k, v in locals().items() if k != "self"})
        result = self.engine.generate(request, self.outputs.next_folder())
        return [Path(path) for path in result.paths]
