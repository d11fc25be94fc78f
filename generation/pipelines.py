"""SDXL pipelines for every mode, sharing one copy of each model component."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusers import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from generation.schedulers import SchedulerCache
from weights.base_models import load_pipeline
from weights.runtime import Runtime


@dataclass
class ModelPipelines:
    """The pipelines built on one model's components (the base, or the refiner)."""

    img2img: StableDiffusionXLImg2ImgPipeline
    inpaint: StableDiffusionXLInpaintPipeline
    schedulers: SchedulerCache
    txt2img: StableDiffusionXLPipeline | None = None  # the refiner has none

    def all(self) -> list:
        return [p for p in (self.txt2img, self.img2img, self.inpaint) if p is not None]

    def set_tokenizers(self, tokenizers: list) -> None:
        """Hand (tokenizer, tokenizer_2) to every pipeline (None where the model has none)."""
        for pipeline in self.all():
            pipeline.tokenizer, pipeline.tokenizer_2 = tokenizers


def load_base(
    source: Path, runtime: Runtime, single_file_config: str | None = None
) -> ModelPipelines:
    """`source`: a diffusers folder or a single-file checkpoint (see `load_pipeline`)."""
    txt2img = load_pipeline(
        StableDiffusionXLPipeline,
        source,
        runtime,
        single_file_config=single_file_config,
        add_watermarker=False,
    )
    return _sharing(txt2img, txt2img=txt2img)


def load_refiner(source: Path, runtime: Runtime, base: ModelPipelines) -> ModelPipelines:
    # The refiner keeps its own second text encoder (trained tokens are installed into it
    # separately, and the base's text-encoder LoRA was not trained for it) but shares the VAE.
    img2img = load_pipeline(
        StableDiffusionXLImg2ImgPipeline,
        source,
        runtime,
        vae=base.img2img.vae,
        add_watermarker=False,
    )
    return _sharing(img2img)


def _sharing(source, txt2img=None) -> ModelPipelines:
    """Build the other modes' pipelines around `source`'s components (no copies)."""
    for component in source.components.values():
        if hasattr(component, "requires_grad_"):
            # Inference only. Also keeps CPU matmuls identical across weight switches:
            # PEFT freezes the layers it wraps, and frozen and trainable weights can take
            # different kernels.
            component.requires_grad_(False)
    config = {
        "force_zeros_for_empty_prompt": source.config.force_zeros_for_empty_prompt,
        "requires_aesthetics_score": source.config.get("requires_aesthetics_score", False),
        "add_watermarker": False,
    }
    components = source.components
    img2img = (
        source
        if isinstance(source, StableDiffusionXLImg2ImgPipeline)
        else StableDiffusionXLImg2ImgPipeline(**components, **config)
    )
    inpaint = StableDiffusionXLInpaintPipeline(**components, **config)
    return ModelPipelines(img2img, inpaint, SchedulerCache(source.scheduler.config), txt2img)
