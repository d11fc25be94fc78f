"""Cog predictor: declares the inputs (names, defaults and ranges of Replicate's SDXL model)
and hands each request to the generation engine."""

import logging
from typing import List, Optional

from cog import BasePredictor, Input, Path

from generation.engine import GenerationEngine
from generation.request import (
    MAX_GUIDANCE,
    MAX_LORA_SCALE,
    MAX_OUTPUTS,
    MAX_STEPS,
    MIN_GUIDANCE,
    OUTPUT_FORMATS,
    REFINE_MODES,
    GenerationRequest,
)
from generation.schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from weights.settings import ModelSettings

# The store's and the switcher's summaries are INFO logs; Cog shows what reaches stderr.
logging.basicConfig(level=logging.INFO, format="%(message)s")


class Predictor(BasePredictor):
    def setup(self, weights: Optional[str] = None) -> None:
        # `weights` is COG_WEIGHTS: a trained version's bundle, the default for every request.
        self.engine = GenerationEngine(ModelSettings.from_env(), default_weights=weights)

    def predict(
        self,
        prompt: str = Input(
            description="Input prompt", default="An astronaut riding a rainbow unicorn"
        ),
        negative_prompt: str = Input(description="Input Negative Prompt", default=""),
        image: Optional[Path] = Input(
            description="Input image for img2img or inpaint mode", default=None
        ),
        mask: Optional[Path] = Input(
            description="Input mask for inpaint mode. Black areas will be preserved, "
            "white areas will be inpainted.",
            default=None,
        ),
        # Empty sizes follow the base model's family: Replicate's 1024 on SDXL, 512 on SD 1.5.
        width: Optional[int] = Input(
            description="Width of output image. Empty: the base model's native size "
            "(1024 for SDXL, 512 for SD 1.5)",
            default=None,
        ),
        height: Optional[int] = Input(
            description="Height of output image. Empty: the base model's native size "
            "(1024 for SDXL, 512 for SD 1.5)",
            default=None,
        ),
        num_outputs: int = Input(
            description="Number of images to output.", ge=1, le=MAX_OUTPUTS, default=1
        ),
        scheduler: str = Input(
            description="scheduler", choices=list(SCHEDULERS), default=DEFAULT_SCHEDULER
        ),
        num_inference_steps: int = Input(
            description="Number of denoising steps", ge=1, le=MAX_STEPS, default=50
        ),
        guidance_scale: float = Input(
            description="Scale for classifier-free guidance",
            ge=MIN_GUIDANCE,
            le=MAX_GUIDANCE,
            default=7.5,
        ),
        prompt_strength: float = Input(
            description="Prompt strength when using img2img / inpaint. 1.0 corresponds to full "
            "destruction of information in image",
            ge=0.0,
            le=1.0,
            default=0.8,
        ),
        seed: Optional[int] = Input(
            description="Random seed. Leave blank to randomize the seed", default=None
        ),
        refine: str = Input(
            description="Which refine style to use",
            choices=list(REFINE_MODES),
            default="no_refiner",
        ),
        high_noise_frac: float = Input(
            description="For expert_ensemble_refiner, the fraction of noise to use",
            ge=0.0,
            le=1.0,
            default=0.8,
        ),
        refine_steps: Optional[int] = Input(
            description="For base_image_refiner, the number of steps to refine, defaults to "
            "num_inference_steps",
            ge=1,
            le=MAX_STEPS,
            default=None,
        ),
        apply_watermark: bool = Input(
            description="Applies a watermark to enable determining if an image is generated in "
            "downstream applications. If you have other provisions for generating or deploying "
            "images safely, you can use this to disable watermarking.",
            default=True,
        ),
        lora_scale: float = Input(
            description="LoRA additive scale. Only applicable on trained models.",
            ge=0.0,
            le=MAX_LORA_SCALE,
            default=0.6,
        ),
        replicate_weights: Optional[str] = Input(
            description="Replicate LoRA weights to use. Leave blank to use the default weights.",
            default=None,
        ),
        extra_lora: Optional[str] = Input(
            description="A second LoRA stacked on the first (e.g. a style on a subject): a "
            "bundle or a LoRA .safetensors in diffusers or kohya layout.",
            default=None,
        ),
        extra_lora_scale: float = Input(
            description="LoRA additive scale of extra_lora.",
            ge=0.0,
            le=MAX_LORA_SCALE,
            default=0.6,
        ),
        disable_safety_checker: bool = Input(
            description="Disable safety checker for generated images. This feature is only "
            "available through the API.",
            default=False,
        ),
        output_format: str = Input(
            description="Format of the output images", choices=list(OUTPUT_FORMATS), default="png"
        ),
        output_quality: int = Input(
            description="Quality of webp/jpg outputs, 1 to 100 (ignored for png)",
            ge=1,
            le=100,
            default=80,
        ),
    ) -> List[Path]:
        result = self.engine.generate(
            GenerationRequest(
                prompt=prompt,
                negative_prompt=negative_prompt,
                image=image,
                mask=mask,
                width=width,
                height=height,
                num_outputs=num_outputs,
                scheduler=scheduler,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                prompt_strength=prompt_strength,
                seed=seed,
                refine=refine,
                high_noise_frac=high_noise_frac,
                refine_steps=refine_steps,
                apply_watermark=apply_watermark,
                lora_scale=lora_scale,
                replicate_weights=replicate_weights,
                extra_lora=extra_lora,
                extra_lora_scale=extra_lora_scale,
                disable_safety_checker=disable_safety_checker,
                output_format=output_format,
                output_quality=output_quality,
            )
        )
        return [Path(path) for path in result.paths]
