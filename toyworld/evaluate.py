"""How well a fine-tune learned the toy world's emblem (or its dusk style), from pixels.

A model (the base alone, or the base with a trained bundle made active by the predictor's own
weights switcher) draws every prompt of two fixed sets for every seed, at 64x64:

- subject prompts, "a TOK on a striped blue background" (8 backgrounds), in the captions'
  words (`toyworld.subject`);
- scene prompts without the trigger, "a red star on a checked green background" (8 scenes).

From those images (`toyworld.metrics` reads them):

- subject fidelity: share of subject images in which both emblem colours cover at least 2% of
  the image; `emblem` is the stricter share whose colours also sit in alternating quarters;
- prompt fidelity: share of subject images whose border has the prompted background colour
  (`pattern`: and the prompted pattern, plain / striped / gradient / checked);
- preservation: share of scene images whose background colour and object colour are still those
  of the base model's image for the same prompt and seed; `drift` is the mean absolute pixel
  difference (0..1) from that image, and `leak` the share of scene images showing the emblem;
- scene fidelity: share of scene images whose background and object colours are the prompted
  ones (how well the model draws the world at all; the base model's value is its ceiling).

A style fine-tune (`evaluate_style`) is measured on style prompts instead, the scene prompts
"… in the style of TOK" (`toyworld.style`): `style` is the share of their images drawn at dusk
(at most `metrics.DUSK_READ` as bright as the base model's image of the scene for the same
seed), `prompt` the share whose background has the prompted colour (in either tone);
preservation, drift and scene fidelity are read as above, and `leak` is the share of scene
images drawn at dusk. Scenes on black backgrounds are left out of both, since black at dusk
is still nearly black.

Subject fidelity has a ceiling of its own: `subject_ceiling` is the share of the emblem photos
that still show the emblem after the base model's VAE encodes and decodes them. A fine-tune
trains the UNet on those latents, so it cannot draw more of the subject than the VAE can.

Bundles are trained through the user's path: `train()` on the emblem zip (preprocessing,
training loop, weights tarball) with the declared defaults except where a caller overrides.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from families import detect_family
from formats.tokens import apply_token_map
from generation.engine import GenerationEngine
from generation.request import GenerationRequest
from generation.switcher import Selection
from serving.cli import parse_inputs
from serving.containers import CONTAINERS, load_entry
from serving.schema import inspect_entry
from toyworld import metrics
from toyworld.recognition import vae_round_trip
from toyworld.scenes import describe, render
from toyworld.scenes import scenes as random_scenes
from toyworld.style import style_image, style_prompt
from toyworld.subject import subject_caption, subject_images
from weights.base_models import resolve_model
from weights.settings import TINY, ModelSettings


@dataclass(frozen=True)
class Background:
    background: str  # plain, gradient, striped, checked
    background_colour: str


@dataclass(frozen=True)
class ScenePrompt:
    shape: str
    colour: str
    background: str
    background_colour: str

    @property
    def text(self) -> str:
        return describe(self)


# White is left out: its two tones are too alike for the pattern to be read back.
SUBJECT_BACKGROUNDS = (
    Background("striped", "blue"),
    Background("plain", "red"),
    Background("checked", "green"),
    Background("gradient", "orange"),
    Background("plain", "purple"),
    Background("striped", "yellow"),
    Background("checked", "black"),
    Background("gradient", "blue"),
)
SCENE_PROMPTS = (
    ScenePrompt("star", "red", "striped", "blue"),
    ScenePrompt("circle", "yellow", "plain", "purple"),
    ScenePrompt("square", "blue", "checked", "orange"),
    ScenePrompt("triangle", "green", "gradient", "red"),
    ScenePrompt("ring", "orange", "plain", "black"),
    ScenePrompt("circle", "purple", "striped", "green"),
    ScenePrompt("star", "white", "gradient", "purple"),
    ScenePrompt("square", "black", "plain", "yellow"),
)
# The style is read from how much darker a picture is; a black background barely darkens.
STYLE_SCENES = tuple(p for p in SCENE_PROMPTS if p.background_colour != "black")


@dataclass(frozen=True)
class EvaluationSettings:
    """None: the base model's own, from its container's predictor (guidance, LoRA scale,
    sampler) and its VAE's config (the image size it was made for)."""

    seeds: tuple[int, ...] = (0, 1, 2, 3)
    num_inference_steps: int = 20
    size: int | None = None
    guidance_scale: float | None = None
    lora_scale: float | None = None
    scheduler: str | None = None

    def for_model(self, pipeline, request: GenerationRequest) -> EvaluationSettings:
        """These settings, each left None taken from the pipeline and its request defaults."""
        own = dict(
            size=pipeline.vae.config.sample_size,
            guidance_scale=request.guidance_scale,
            lora_scale=request.lora_scale,
            scheduler=request.scheduler,
        )
        return dataclasses.replace(
            self, **{name: value for name, value in own.items() if getattr(self, name) is None}
        )


class Metrics:
    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Fidelity(Metrics):
    subject: float
    emblem: float
    prompt: float
    pattern: float
    preserved: float
    drift: float
    leak: float
    scene: float


@dataclass(frozen=True)
class StyleFidelity(Metrics):
    style: float
    prompt: float
    preserved: float
    drift: float
    leak: float
    scene: float


@dataclass(frozen=True)
class Evaluation:
    fidelity: Fidelity | StyleFidelity
    # The subject's (or the style's) prompts, prompt-major: every seed of the first, ...
    subject_images: list[Image.Image]
    scene_images: list[Image.Image]
    seeds: int  # images per prompt

    def first_seed(self) -> list[Image.Image]:
        """One image per prompt (the first seed's), subject (or style) prompts, then scenes."""
        return self.subject_images[:: self.seeds] + self.scene_images[:: self.seeds]


class ToyEvaluator:
    """Draws the prompt sets with one base model and any number of trained bundles."""

    def __init__(
        self,
        base_model: str,
        cache_dir: Path,
        settings: EvaluationSettings = EvaluationSettings(),
    ):
        # The predictor's engine: its switcher makes bundles active exactly as predictions do.
        # SDXL engines load a refiner; the tiny one is enough, the evaluation never uses it.
        model_settings = dataclasses.replace(
            ModelSettings.from_env(),
            base_model=base_model,
            refiner_model=TINY,
            safety_checker_model=TINY,
            cache_dir=Path(cache_dir),
        )
        self.engine = GenerationEngine(model_settings)
        self.pipeline = self.engine.base.txt2img
        self.pipeline.set_progress_bar_config(disable=True)
        request = CONTAINERS[self.engine.family.container].request()
        self.settings = settings.for_model(self.pipeline, request)

    @functools.cached_property
    def reference(self) -> list[Image.Image]:
        """The base model's scene images: what preservation is measured against. Drawn on
        first use, so callers that never evaluate a bundle (the ceiling, the denoising
        benchmark) do not pay for them."""
        return self.draw([p.text for p in SCENE_PROMPTS], weights=None)

    def subject_ceiling(self, count: int = 8) -> float:
        """Share of `count` emblem photos in which the VAE's round trip keeps the emblem."""
        photos = [image for image, _ in subject_images(count, seed=0)]
        decoded = vae_round_trip(self.pipeline.vae, photos)
        return _share(metrics.subject_present(image) for image in decoded)

    def style_ceiling(self, count: int = 8) -> float:
        """Share of `count` style photos (without black backgrounds, as the style prompts)
        still at dusk after the VAE's round trip, against the round trip of the same scene
        at full brightness."""
        scenes = [s for s in random_scenes(count, seed=0) if s.background_colour != "black"]
        styled = vae_round_trip(self.pipeline.vae, [style_image(s) for s in scenes])
        plain = vae_round_trip(self.pipeline.vae, [render(s) for s in scenes])
        return _share(metrics.at_dusk(a, b) for a, b in zip(styled, plain, strict=True))

    def draw(
        self, prompts: list[str], weights: str | None, lora_scale: float | None = None
    ) -> list[Image.Image]:
        """Every prompt for every seed (prompt-major order), with `weights` active at
        `lora_scale` (by default the settings')."""
        prepared = self.engine.weights_cache.get(str(weights)) if weights else None
        scale = self.settings.lora_scale if lora_scale is None else lora_scale
        self.engine.switcher.activate(Selection(prepared, scale))
        token_map = prepared.token_map if prepared else {}
        texts = [apply_token_map(p, token_map) for p in prompts for _ in self.settings.seeds]
        seeds = [seed for _ in prompts for seed in self.settings.seeds]
        if self.engine.family.named_schedulers:
            self.pipeline.scheduler = self.engine.base.schedulers.get(self.settings.scheduler)
        with torch.inference_mode():
            return self.pipeline(
                texts,
                width=self.settings.size,
                height=self.settings.size,
                num_inference_steps=self.settings.num_inference_steps,
                guidance_scale=self.settings.guidance_scale,
                generator=[torch.Generator().manual_seed(seed) for seed in seeds],
            ).images

    def evaluate(self, weights: str | None = None) -> Evaluation:
        """The metrics of the base model (`weights=None`) or of the base with a bundle."""
        per_seed = len(self.settings.seeds)
        subject_images = self.draw([subject_caption(b) for b in SUBJECT_BACKGROUNDS], weights)
        backgrounds = [b for b in SUBJECT_BACKGROUNDS for _ in range(per_seed)]
        scene_images = self.scene_images(weights)
        fidelity = Fidelity(
            subject=_share(metrics.subject_present(i) for i in subject_images),
            emblem=_share(metrics.emblem_quartered(i) for i in subject_images),
            prompt=_share(
                metrics.background_colour(i) == b.background_colour
                for i, b in zip(subject_images, backgrounds, strict=True)
            ),
            pattern=_share(
                metrics.background_colour(i) == b.background_colour
                and metrics.background_pattern(i) == b.background
                for i, b in zip(subject_images, backgrounds, strict=True)
            ),
            leak=_share(metrics.subject_present(i) for i in scene_images),
            **self._preservation(scene_images),
        )
        return Evaluation(fidelity, subject_images, scene_images, per_seed)

    def evaluate_style(self, weights: str | None = None) -> Evaluation:
        """The style metrics of the base model (`weights=None`) or of the base with a bundle."""
        per_seed = len(self.settings.seeds)
        style_images = self.draw([style_prompt(p.text) for p in STYLE_SCENES], weights)
        prompted = [p for p in STYLE_SCENES for _ in range(per_seed)]
        scene_images = self.scene_images(weights)
        scenes = [p for p in SCENE_PROMPTS for _ in range(per_seed)]
        # The style's scenes' images and the base model's (in STYLE_SCENES' order, per seed).
        kept = [
            (image, base)
            for image, base, p in zip(scene_images, self.reference, scenes, strict=True)
            if p in STYLE_SCENES
        ]
        base_images = [base for _, base in kept]
        fidelity = StyleFidelity(
            style=_share(
                metrics.at_dusk(i, b) for i, b in zip(style_images, base_images, strict=True)
            ),
            prompt=_share(
                metrics.tone_colours(i)[0] == p.background_colour
                for i, p in zip(style_images, prompted, strict=True)
            ),
            leak=_share(metrics.at_dusk(i, b) for i, b in kept),
            **self._preservation(scene_images),
        )
        return Evaluation(fidelity, style_images, scene_images, per_seed)

    def scene_images(self, weights: str | None) -> list[Image.Image]:
        return self.draw([p.text for p in SCENE_PROMPTS], weights) if weights else self.reference

    def _preservation(self, scene_images: list[Image.Image]) -> dict[str, float]:
        """`preserved`, `drift` and `scene` of the scene prompts' images (module docstring)."""
        per_seed = len(self.settings.seeds)
        scenes = [p for p in SCENE_PROMPTS for _ in range(per_seed)]
        pairs = list(zip(scene_images, self.reference, strict=True))
        return dict(
            preserved=_share(_colours(image) == _colours(before) for image, before in pairs),
            drift=float(np.mean([metrics.drift(image, before) for image, before in pairs])),
            scene=_share(
                _colours(i) == (p.background_colour, p.colour)
                for i, p in zip(scene_images, scenes, strict=True)
            ),
        )

    def lora_effect(self, weights: str, evaluation: Evaluation) -> float:
        """How much a bundle's LoRA changes what the subject prompts draw: the mean drift
        between their images in `evaluation` (the bundle's, at the settings' LoRA scale) and
        at scale 0 (its tokens alone). 0 when the LoRA learnt nothing."""
        prompts = [subject_caption(b) for b in SUBJECT_BACKGROUNDS]
        tokens_only = self.draw(prompts, weights, lora_scale=0.0)
        pairs = zip(evaluation.subject_images, tokens_only, strict=True)
        return float(np.mean([metrics.drift(a, b) for a, b in pairs]))


@dataclass(frozen=True)
class TrainedBundle:
    path: Path  # the weights tarball
    seconds: float  # wall time of train(), preprocessing and bundle writing included


def train_on_zip(photos_zip: Path, base_model: str, out_dir: Path, **inputs) -> TrainedBundle:
    """Run the Cog `train()` on `photos_zip` as Cog would: the declared defaults for every
    input not in `inputs`, each checked against its declaration. The tarball is moved to
    `out_dir`."""
    # The Cog entry of the base model's container; imported late, it sets up logging.
    cache_dir = ModelSettings.from_env().cache_dir
    family = detect_family(resolve_model(base_model, "base", cache_dir))
    trainer = CONTAINERS[family.container].trainer
    train = load_entry(trainer)
    kwargs = parse_inputs(
        [f"input_images=@{photos_zip}"],
        json.dumps({"base_model": base_model, **inputs}),
        inspect_entry(trainer),
    )
    started = time.perf_counter()
    bundle = Path(train(**kwargs))
    seconds = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    target = Path(tempfile.mkdtemp(prefix="bundle-", dir=out_dir)) / bundle.name
    shutil.move(bundle, target)
    shutil.rmtree(bundle.parent, ignore_errors=True)  # the folder train() handed it over in
    return TrainedBundle(target, seconds)


def _colours(image) -> tuple[str, str | None]:
    return metrics.background_colour(image), metrics.object_colour(image)


def _share(hits) -> float:
    hits = list(hits)
    return float(np.mean(hits)) if hits else 0.0
