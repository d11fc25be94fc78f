"""Pipelines for every mode of a model family, sharing one copy of each model component.

The family is read from the model's config; its pipeline classes and the few loading options
that differ are the family's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import diffusers

from families import TOKENIZER_NAMES, ModelFamily, detect_family
from generation.schedulers import SchedulerCache
from weights.base_models import load_pipeline
from weights.runtime import Runtime


@dataclass
class ModelPipelines:
    """The pipelines built on one model's components (the base, or the refiner)."""

    family: ModelFamily
    img2img: diffusers.DiffusionPipeline
    inpaint: diffusers.DiffusionPipeline
    schedulers: SchedulerCache
    txt2img: diffusers.DiffusionPipeline | None = None  # the refiner has none

    def all(self) -> list:
        return [p for p in (self.txt2img, self.img2img, self.inpaint) if p is not None]

    def set_tokenizers(self, tokenizers: list) -> None:
        """Hand the tokenizers, in encoder order, to every pipeline (None where the model has
        no such encoder)."""
        for pipeline in self.all():
            for name, tokenizer in zip(TOKENIZER_NAMES, tokenizers, strict=False):
                setattr(pipeline, name, tokenizer)


def load_base(
    source: Path, runtime: Runtime, single_file_config: str | None = None
) -> ModelPipelines:
    """`source`: a diffusers folder or a single-file checkpoint (see `load_pipeline`)."""
    family = detect_family(source)
    txt2img = load_pipeline(
        getattr(diffusers, family.txt2img_pipeline),
        source,
        runtime,
        single_file_config=single_file_config,
        **family.pipeline_options,
    )
    return _sharing(txt2img, family, txt2img=txt2img)


def load_refiner(source: Path, runtime: Runtime, base: ModelPipelines) -> ModelPipelines:
    # The refiner keeps its own second text encoder (trained tokens are installed into it
    # separately, and the base's text-encoder LoRA was not trained for it) but shares the VAE.
    img2img = load_pipeline(
        getattr(diffusers, base.family.img2img_pipeline),
        source,
        runtime,
        vae=base.img2img.vae,
        **base.family.pipeline_options,
    )
    return _sharing(img2img, base.family)


def _sharing(source, family: ModelFamily, txt2img=None) -> ModelPipelines:
    """Build the other modes' pipelines around `source`'s components (no copies)."""
    for component in source.components.values():
        if hasattr(component, "requires_grad_"):
            # Inference only. Also keeps CPU matmuls identical across weight switches:
            # PEFT freezes the layers it wraps, and frozen and trainable weights can take
            # different kernels.
            component.requires_grad_(False)
    config = family.shared_pipeline_options(source)
    components = source.components
    img2img_class = getattr(diffusers, family.img2img_pipeline)
    img2img = source if isinstance(source, img2img_class) else img2img_class(**components, **config)
    inpaint = getattr(diffusers, family.inpaint_pipeline)(**components, **config)
    return ModelPipelines(
        family, img2img, inpaint, SchedulerCache(source.scheduler.config), txt2img
    )
