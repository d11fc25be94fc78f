"""One generation request, end to end: the orchestration behind `predict()`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from formats.input_ranges import random_seed
from formats.tokens import apply_token_map, contains_trigger
from generation.layer_names import LayerNames
from generation.lora import PreparedLora
from generation.outputs import Watermarker, save_images
from generation.pipelines import load_base, load_refiner
from generation.request import (
    GenerationRequest,
    InvalidRequestError,
    load_image,
    resize,
    validate,
    working_size,
)
from generation.safety import SafetyChecker, resolve_safety_checker
from generation.switcher import Selection, TokenTarget, WeightsSwitcher
from generation.weights_cache import PreparedWeights, WeightsCache
from weights.base_models import hub_variant, resolve_model
from weights.download import DownloadPolicy, describe_source
from weights.request_files import fetch_input
from weights.runtime import Runtime, pick_runtime
from weights.scratch import call_folder, remove_orphans
from weights.settings import ModelSettings
from weights.store import ModelStore

BASE_IMAGE_REFINER_STRENGTH = 0.3  # diffusers' img2img default, as the reference used
# A model asked for sides this much larger than its native resolution repeats its subject.
OVERSIZE_NOTE_FACTOR = 1.5
# A request's `image` and `mask` are fetched into such a folder, removed once they are read.
INPUTS_PREFIX = "sdxl-tuner-inputs-"


class DefaultWeightsError(RuntimeError):
    """The deployment's own trained weights (COG_WEIGHTS) cannot be loaded."""


@dataclass(frozen=True)
class GenerationResult:
    paths: list[Path]
    seed: int
    flagged: list[int]  # indices of outputs the safety checker left out


class GenerationEngine:
    def __init__(self, settings: ModelSettings, default_weights: str | None = None):
        self.runtime: Runtime = pick_runtime(settings.device, settings.dtype, settings.speed)
        cache_dir, variant = settings.cache_dir, hub_variant(self.runtime)
        base_source = resolve_model(settings.base_model, "base", cache_dir, variant)
        self.base = load_base(base_source, self.runtime, settings.single_file_config)
        self.family = self.base.family
        # Which variant of its family the base is (FLUX.1: dev or schnell), which a request
        # may name; None for families without variants.
        self.variant = self.family.served_variant(self.base.txt2img)
        self.refiner = None  # REFINER_MODEL is not loaded for a family without a refiner
        if self.family.default_refiner_model is not None:
            refiner_source = resolve_model(settings.refiner_model, "refiner", cache_dir, variant)
            self.refiner = load_refiner(refiner_source, self.runtime, self.base)
        checker_folder = resolve_safety_checker(settings.safety_checker_model, cache_dir)
        self.safety_checker = SafetyChecker(checker_folder, self.runtime)
        self.watermarker = Watermarker()
        self.local_dirs = settings.local_dirs  # folders requests may name files in by path
        self.input_policy = DownloadPolicy.from_settings(settings)
        remove_orphans(INPUTS_PREFIX)  # left by a killed worker

        txt2img = self.base.txt2img
        encoders = {name: getattr(txt2img, name) for name in self.family.text_encoder_names}
        tokenizers = [getattr(txt2img, name) for name in self.family.tokenizer_names]
        token_targets = [TokenTarget(list(encoders.values()), tokenizers, self.base.set_tokenizers)]
        if self.refiner is not None:
            token_targets.append(
                TokenTarget(
                    [None, self.refiner.img2img.text_encoder_2],
                    [None, self.refiner.img2img.tokenizer_2],
                    self.refiner.set_tokenizers,
                )
            )
        denoiser = {self.family.denoiser: getattr(txt2img, self.family.denoiser)}
        self.switcher = WeightsSwitcher({**denoiser, **encoders}, token_targets)
        # Weights that do not fit these models are refused before they become cache entries.
        self.weights_cache = WeightsCache(
            self.runtime,
            ModelStore.from_settings(settings),
            self.family,
            LayerNames(self.switcher.components, self.family),
            fits=lambda weights: self.switcher.check(Selection(weights)),
            max_entries=settings.loaded_weights,
        )
        # The trained version's own weights (COG_WEIGHTS): held here, never evicted. Weights
        # that cannot be loaded now do not stop the server: each request that would use them
        # tries again (a download may have failed for a moment) or says why it cannot.
        self.default_reference = str(default_weights) if default_weights else None
        self.default_weights: PreparedWeights | None = None
        if self.default_reference:
            try:
                self._load_default_weights()
            except DefaultWeightsError as error:
                print(error)

    def generate(self, request: GenerationRequest, output_dir: Path) -> GenerationResult:
        """Run one request; the images are written into `output_dir`."""
        # 1. Check the inputs before any work.
        request, notes = validate(request, self.local_dirs)
        requested_variant = getattr(request, "model", None)
        if requested_variant not in (None, self.variant):
            raise InvalidRequestError(
                f"model={requested_variant!r}, but this deployment serves {self.family.title}-"
                f"{self.variant}: send model={self.variant!r} (or deploy a {requested_variant} "
                "base model with BASE_MODEL)."
            )
        if request.refine != "no_refiner" and self.refiner is None:
            raise InvalidRequestError(
                f"refine={request.refine!r} needs a refiner, and {self.family.title} models have "
                "none: use refine='no_refiner'."
            )
        if request.reference_images() and not self.family.reference_keywords:
            raise InvalidRequestError(
                f"images: {self.family.title} models take no reference images; send an "
                "`image` to start from instead."
            )
        image, mask, references = self._input_images(request, notes)
        for note in notes:
            print(note)

        # 2. Seed: drawn at random unless given, and logged.
        seed = random_seed() if request.seed is None else request.seed
        print(f"Using seed: {seed}")
        generator = torch.Generator("cpu").manual_seed(seed)

        # 3. Trained weights: this request's, or the version's default; never a leftover.
        main = self._main_weights(request)
        stacked = tuple(
            (self._stacked_lora(reference), scale) for reference, scale in request.stacked_loras()
        )
        self.switcher.activate(Selection(main, request.lora_scale, stacked))
        token_map = main.token_map if main else {}
        _note_triggers(request.prompt, main)
        prompt = apply_token_map(request.prompt, token_map)
        negative_prompt = apply_token_map(request.negative_prompt, token_map)

        # 4. Generate, then refine.
        if image is not None and mask is None and self.family.image_is_reference:
            # Editing the image: it leads the reference images, at its own size.
            request = replace(request, width=image.width, height=image.height)
            image, references = None, [image, *references]
        images = self._run(request, prompt, negative_prompt, image, mask, references, generator)
        if mask is not None:  # black pixels of the mask keep the input exactly
            images = [Image.composite(out, image, mask) for out in images]

        # 5. Safety check, watermark, files.
        flagged = []
        if not request.disable_safety_checker:
            verdict = self.safety_checker.filter(images)
            images, flagged = verdict.kept, verdict.flagged
            if flagged:
                print(
                    f"{len(flagged)} of {request.num_outputs} images were flagged as potentially "
                    f"NSFW by the safety checker and left out (outputs {flagged})."
                )
        if request.apply_watermark:
            images = self.watermarker.apply(images)
        paths = save_images(images, output_dir, request.output_format, request.output_quality)
        return GenerationResult(paths, seed, flagged)

    def _input_images(self, request: GenerationRequest, notes: list[str]):
        """The image and mask at the size they are used, and the reference images: img2img
        keeps the image's own size (as Replicate's models do); SDXL's inpainting paints at
        width x height, Flux's at the image's size. Reference images go to the pipeline as
        they are (it sizes them)."""
        named = {"image": request.image, "mask": request.mask}
        named.update({f"images[{i}]": ref for i, ref in enumerate(request.reference_images())})
        named = {name: reference for name, reference in named.items() if reference is not None}
        with call_folder(INPUTS_PREFIX) as folder:  # all fetched before any is decoded
            files = {n: fetch_input(n, r, folder, self.input_policy) for n, r in named.items()}
            loaded = {
                name: load_image(file, name, describe_source(str(named[name])), mode)
                for name, file in files.items()
                for mode in ["L" if name == "mask" else "RGB"]
            }
        references = [loaded[name] for name in named if name.startswith("images[")]
        image, mask = loaded.get("image"), loaded.get("mask")
        if image is None:
            self._note_oversize(request.width, request.height, notes)
            return None, None, references
        if request.works_at_image_size:
            size, note = working_size(image, request.num_outputs, request.size_multiple)
            notes += [note] if note else []
        else:
            size = (request.width, request.height)
        self._note_oversize(*size, notes)
        return resize(image, size), None if mask is None else resize(mask, size), references

    def _note_oversize(self, width: int, height: int, notes: list[str]) -> None:
        native = self.family.native_resolution
        if max(width, height) > OVERSIZE_NOTE_FACTOR * native:
            notes.append(
                f"{self.family.title} models draw best near {native}x{native}; at {width}x"
                f"{height} they tend to repeat the subject. Pass smaller width and height."
            )

    # --- weights --------------------------------------------------------------------------------

    def _main_weights(self, request: GenerationRequest) -> PreparedWeights | None:
        if request.replicate_weights:
            return self.weights_cache.get(request.replicate_weights)
        if self.default_reference and self.default_weights is None:
            self._load_default_weights()
        return self.default_weights

    def _load_default_weights(self) -> None:
        try:
            self.default_weights = self.weights_cache.get(self.default_reference)
        except Exception as error:  # whatever keeps them out, reported as the reason
            raise DefaultWeightsError(
                f"This deployment's trained weights (COG_WEIGHTS) could not be loaded: "
                f"{type(error).__name__}: {error} Fix COG_WEIGHTS and restart the server, or "
                "name weights in the request (replicate_weights)."
            ) from None
        self.switcher.activate(Selection(self.default_weights))

    def _stacked_lora(self, reference) -> PreparedLora:
        stacked = self.weights_cache.get(reference)
        if stacked.lora is None:
            raise InvalidRequestError(
                f"{stacked.source} holds no LoRA (a full fine-tune cannot be stacked); pass it "
                "as replicate_weights instead."
            )
        if stacked.token_map:
            print(
                f"The trained tokens of {stacked.source} are not used (only its LoRA is "
                "stacked); pass it as replicate_weights to use them."
            )
        return stacked.lora

    # --- modes ----------------------------------------------------------------------------------

    def _run(
        self, request, prompt, negative_prompt, image, mask, references, generator
    ) -> list[Image.Image]:
        if image is not None and request.prompt_strength == 0:
            print("prompt_strength is 0: the input image is returned unchanged.")
            return [image.copy() for _ in range(request.num_outputs)]
        common = dict(
            prompt=[prompt] * request.num_outputs,
            guidance_scale=request.guidance_scale,  # Flux: the distilled guidance
            generator=generator,
        )
        if self.family.negative_prompt:
            common["negative_prompt"] = [negative_prompt] * request.num_outputs
        steps = request.num_inference_steps
        pipeline, base_args = self._base_call(request, common, image, mask, references)
        if self.family.named_schedulers:
            pipeline.scheduler = self.base.schedulers.get(request.scheduler)
        if request.refine == "no_refiner":
            return pipeline(**base_args).images

        refiner = self.refiner.inpaint if mask is not None else self.refiner.img2img
        refiner.scheduler = self.refiner.schedulers.get(request.scheduler)
        refiner_args = dict(common, mask_image=mask) if mask is not None else dict(common)
        refine = request.refine
        strength = request.prompt_strength if image is not None else 1.0
        if refine == "expert_ensemble_refiner" and not _ensemble_splits(
            pipeline.scheduler, base_args["num_inference_steps"], strength, request.high_noise_frac
        ):
            print(
                f"high_noise_frac {request.high_noise_frac} leaves the base or the refiner no "
                f"step at {steps} steps: running the base model alone."
            )
            refine = "no_refiner"

        if refine == "expert_ensemble_refiner":
            latents = pipeline(
                **base_args, denoising_end=request.high_noise_frac, output_type="latent"
            ).images
            refiner_args.update(
                image=latents,
                num_inference_steps=base_args["num_inference_steps"],
                denoising_start=request.high_noise_frac,
            )
            return refiner(**refiner_args).images
        images = pipeline(**base_args).images
        if refine == "base_image_refiner":
            refine_steps = request.refine_steps or steps
            refiner_args.update(
                image=images,
                strength=BASE_IMAGE_REFINER_STRENGTH,
                num_inference_steps=_steps_for_strength(refine_steps, BASE_IMAGE_REFINER_STRENGTH),
            )
            if mask is not None:
                refiner_args.update(width=request.width, height=request.height)
            images = refiner(**refiner_args).images
        return images

    def _base_call(self, request, common: dict, image, mask, references) -> tuple:
        """The base model's pipeline for the request's mode, and its arguments."""
        steps = request.num_inference_steps
        base_args = dict(common, num_inference_steps=steps)
        if image is None:
            pipeline = self.base.txt2img
            base_args.update(width=request.width, height=request.height)
        else:
            pipeline = self.base.inpaint if mask is not None else self.base.img2img
            base_args.update(image=image, strength=request.prompt_strength)
            base_args["num_inference_steps"] = _steps_for_strength(steps, request.prompt_strength)
            if mask is not None:
                base_args.update(mask_image=mask, width=image.width, height=image.height)
            elif self.family.img2img_takes_size:  # else it would work at its default size
                base_args.update(width=image.width, height=image.height)
        if references:  # editing: the mode's pipeline takes them under its own keyword
            mode = "inpaint" if mask is not None else "img2img" if image is not None else "txt2img"
            if mode not in self.family.reference_keywords:
                raise InvalidRequestError(
                    f"images: {self.family.title} takes reference images for "
                    f"{' and '.join(self.family.reference_keywords)}, not {mode}."
                )
            base_args[self.family.reference_keywords[mode]] = references
        return pipeline, base_args


def _note_triggers(prompt: str, weights: PreparedWeights | None) -> None:
    """Say whether the prompt names what the weights were trained on: their trained tokens
    replace the trigger, and a prompt without it draws little of the subject."""
    triggers = weights.trigger_words if weights else ()
    used = [t for t in triggers if contains_trigger(prompt, t)]
    if used and weights.token_map:
        print(f"Trained tokens for {', '.join(used)} in the prompt.")
    elif triggers and not used:
        print(
            f"The prompt does not contain {' or '.join(triggers)}, the word these weights were "
            f"trained on: only the LoRA applies, not what was learnt for that word. Write "
            f"{triggers[0]} where the subject or style belongs (e.g. 'a photo of {triggers[0]}')."
        )


def _ensemble_splits(scheduler, steps: int, strength: float, high_noise_frac: float) -> bool:
    """Whether handing over at `high_noise_frac` leaves at least one step on each side
    (diffusers fails on an empty half). Mirrors diffusers' img2img step selection."""
    scheduler.set_timesteps(steps)
    skipped = steps - min(int(steps * strength), steps)
    timesteps = scheduler.timesteps[skipped * scheduler.order :]
    train_steps = scheduler.config.num_train_timesteps
    cutoff = round(train_steps - high_noise_frac * train_steps)
    base_steps = int((timesteps >= cutoff).sum())
    return 0 < base_steps < len(timesteps)


def _steps_for_strength(steps: int, strength: float) -> int:
    """diffusers runs int(steps * strength) steps of an img2img pass and fails at 0: take at
    least enough steps for one."""
    while int(steps * strength) < 1:
        steps += 1
    return steps
