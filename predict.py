"""Cog predictor: declares the inputs (names, defaults and ranges of Replicate's SDXL model;
each default and range lives on its `GenerationRequest` field) and hands each request to the
generation engine."""

import weights.quiet  # noqa: F401 (first: keeps libraries' import-time noise out of logs)

# isort: split
import logging
from typing import Any, List, Optional

from cog import BasePredictor, Path

import serving.cog_files  # noqa: F401  (Cog's file downloads are ours: see there)
from generation.engine import GenerationEngine
from generation.request import GenerationRequest
from serving.handoff import OutputHandoff
from serving.inputs import declared
from weights.settings import ModelSettings

# The store's and the switcher's summaries are INFO logs; Cog shows what reaches stderr.
logging.basicConfig(level=logging.INFO, format="%(message)s")


def _input(name: str, description: str):
    return declared(GenerationRequest, name, description)


class Predictor(BasePredictor):
    def setup(self, weights: Optional[str] = None) -> None:
        # `weights` is COG_WEIGHTS: a trained version's bundle, the default for every request.
        self.engine = GenerationEngine(ModelSettings.from_env(), default_weights=weights)
        # A request's images stay until the next request starts; nothing else stays.
        self.outputs = OutputHandoff("sdxl-tuner-outputs-")

    def predict(
        self,
        prompt: str = _input("prompt", "Input prompt"),
        negative_prompt: str = _input("negative_prompt", "Input Negative Prompt"),
        image: Optional[Path] = _input("image", "Input image for img2img or inpaint mode"),
        mask: Optional[Path] = _input(
            "mask",
            "Input mask for inpaint mode. Black areas will be preserved, white areas will be "
            "inpainted.",
        ),
        width: int = _input(
            "width", "Width of output image (img2img keeps the input image's size)"
        ),
        height: int = _input(
            "height", "Height of output image (img2img keeps the input image's size)"
        ),
        num_outputs: int = _input("num_outputs", "Number of images to output."),
        scheduler: str = _input("scheduler", "scheduler"),
        num_inference_steps: int = _input("num_inference_steps", "Number of denoising steps"),
        guidance_scale: float = _input("guidance_scale", "Scale for classifier-free guidance"),
        prompt_strength: float = _input(
            "prompt_strength",
            "Prompt strength when using img2img / inpaint. 1.0 corresponds to full destruction "
            "of information in image",
        ),
        seed: Optional[int] = _input("seed", "Random seed. Leave blank to randomize the seed"),
        refine: str = _input("refine", "Which refine style to use"),
        high_noise_frac: float = _input(
            "high_noise_frac", "For expert_ensemble_refiner, the fraction of noise to use"
        ),
        refine_steps: Optional[int] = _input(
            "refine_steps",
            "For base_image_refiner, the number of steps to refine, defaults to "
            "num_inference_steps",
        ),
        apply_watermark: bool = _input(
            "apply_watermark",
            "Applies a watermark to enable determining if an image is generated in downstream "
            "applications. If you have other provisions for generating or deploying images "
            "safely, you can use this to disable watermarking.",
        ),
        lora_scale: float = _input(
            "lora_scale", "LoRA additive scale. Only applicable on trained models."
        ),
        replicate_weights: Optional[str] = _input(
            "replicate_weights",
            "Replicate LoRA weights to use (a URL). Leave blank to use the default weights.",
        ),
        extra_lora: Optional[str] = _input(
            "extra_lora",
            "A LoRA stacked on the weights (e.g. a style on a subject), by URL: a bundle or a "
            "LoRA .safetensors in diffusers or kohya layout.",
        ),
        extra_lora_scale: float = _input("extra_lora_scale", "LoRA additive scale of extra_lora."),
        loras: Optional[Any] = _input(
            "loras",
            'More LoRAs stacked after extra_lora, as a JSON object of URL to scale: {"https://'
            '…/style.safetensors": 0.8, …}',
        ),
        disable_safety_checker: bool = _input(
            "disable_safety_checker",
            "Disable safety checker for generated images. This feature is only available "
            "through the API.",
        ),
        output_format: str = _input("output_format", "Format of the output images"),
        output_quality: int = _input(
            "output_quality", "Quality of webp/jpg outputs, 1 to 100 (ignored for png)"
        ),
    ) -> List[Path]:
        request = GenerationRequest(**{k: v for k, v in locals().items() if k != "self"})
        result = self.engine.generate(request, self.outputs.next_folder())
        return [Path(path) for path in result.paths]
