"""Cog predictor: declares the inputs (names and defaults as Replicate's SDXL model) and
hands each request to the generation code."""

import random
from typing import List, Optional

import torch
from cog import BasePredictor, Input, Path
from diffusers import StableDiffusionXLPipeline

from weights.base_models import load_pipeline, resolve_model
from weights.runtime import pick_runtime
from weights.settings import ModelSettings


class Predictor(BasePredictor):
    def setup(self, weights: Optional[str] = None) -> None:
        settings = ModelSettings.from_env()
        self.runtime = pick_runtime(settings.device, settings.dtype)
        base = resolve_model(settings.base_model, "base", settings.cache_dir)
        self.txt2img = load_pipeline(StableDiffusionXLPipeline, base, self.runtime)

    def predict(
        self,
        prompt: str = Input(
            description="Input prompt", default="An astronaut riding a rainbow unicorn"
        ),
        negative_prompt: str = Input(description="Input Negative Prompt", default=""),
        width: int = Input(description="Width of output image", default=1024),
        height: int = Input(description="Height of output image", default=1024),
        num_outputs: int = Input(description="Number of images to output.", ge=1, le=4, default=1),
        num_inference_steps: int = Input(
            description="Number of denoising steps", ge=1, le=500, default=50
        ),
        guidance_scale: float = Input(
            description="Scale for classifier-free guidance", ge=1, le=50, default=7.5
        ),
        seed: Optional[int] = Input(
            description="Random seed. Leave blank to randomize the seed", default=None
        ),
    ) -> List[Path]:
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        print(f"Using seed: {seed}")
        generator = torch.Generator("cpu").manual_seed(seed)
        images = self.txt2img(
            prompt=[prompt] * num_outputs,
            negative_prompt=[negative_prompt] * num_outputs,
            width=width,
            height=height,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
        ).images
        paths = []
        for index, image in enumerate(images):
            path = Path(f"/tmp/out-{index}.png")
            image.save(path)
            paths.append(path)
        return paths
