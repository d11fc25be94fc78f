"""What a generation request asks for: every input's default and range (declared once, on
the field; predict.py builds its Cog inputs from them), and the checks that turn bad input
into clear errors before any work."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from PIL import Image, ImageOps, UnidentifiedImageError

from families import FLUX, SDXL
from formats.input_ranges import one_of, range_problems, ranged, seed_field
from generation.schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from weights.references import LocalPathRefused, check_file_input

REFINE_MODES = ("no_refiner", "expert_ensemble_refiner", "base_image_refiner")
OUTPUT_FORMATS = ("png", "webp", "jpg")
MAX_OUTPUTS = 4
MAX_STEPS = 500
MIN_GUIDANCE, MAX_GUIDANCE = 1.0, 50.0
MAX_LORA_SCALE = 4.0  # LoRAs are often used above 1 (the reference stopped at 1)
MAX_STACKED_LORAS = 8  # extra_lora plus the entries of `loras`
MIN_SIDE, MAX_SIDE = 64, 4096
SIZE_MULTIPLE = SDXL.pixel_multiple  # the VAE downsamples by 8
# Pixels per request (all outputs together): 4 images of 1536x1536, or one of 3072x3072.
MAX_PIXELS_PER_REQUEST = 4 * 1536 * 1536
# The inputs that name files: over HTTP, only as URLs or data URIs (weights/references.py).
FILE_INPUTS = ("image", "mask", "replicate_weights", "extra_lora")
# Reference images one request may send (`images`, of the families that edit from them).
MAX_REFERENCE_IMAGES = 5


class InvalidRequestError(ValueError):
    """The request's inputs are invalid; the message says which and what to do."""


@dataclass(frozen=True)
class GenerationRequest:
    """Replicate's SDXL predictor's inputs (SDXL and SD 1.5 bases)."""

    # Output sides are rounded down to this; inpainting paints at width x height.
    size_multiple: ClassVar[int] = SIZE_MULTIPLE
    inpaints_at_image_size: ClassVar[bool] = False

    prompt: str = "An astronaut riding a rainbow unicorn"
    negative_prompt: str = ""
    # Files: a URL or data URI (as text, or as the path-like object Cog hands over for a
    # `Path` input), or a path the operator chose (weights/references.py).
    image: str | os.PathLike | None = None
    mask: str | os.PathLike | None = None
    # Replicate's sizes. img2img keeps the input image's size, as Replicate's model does.
    width: int = ranged(1024, MIN_SIDE, MAX_SIDE)
    height: int = ranged(1024, MIN_SIDE, MAX_SIDE)
    num_outputs: int = ranged(1, 1, MAX_OUTPUTS)
    scheduler: str = one_of(DEFAULT_SCHEDULER, SCHEDULERS)
    num_inference_steps: int = ranged(50, 1, MAX_STEPS)
    guidance_scale: float = ranged(7.5, MIN_GUIDANCE, MAX_GUIDANCE)
    prompt_strength: float = ranged(0.8, 0.0, 1.0)
    seed: int | None = seed_field()
    refine: str = one_of("no_refiner", REFINE_MODES)
    high_noise_frac: float = ranged(0.8, 0.0, 1.0)
    refine_steps: int | None = ranged(None, 1, MAX_STEPS)
    apply_watermark: bool = True
    lora_scale: float = ranged(0.6, 0.0, MAX_LORA_SCALE)
    replicate_weights: str | os.PathLike | None = None
    extra_lora: str | os.PathLike | None = None
    extra_lora_scale: float = ranged(0.6, 0.0, MAX_LORA_SCALE)
    # OctoAI's form: {"<URL of a LoRA or bundle>": scale, ...}, stacked after extra_lora.
    loras: dict | None = field(default=None, hash=False)
    disable_safety_checker: bool = False
    output_format: str = one_of("png", OUTPUT_FORMATS)
    output_quality: int = ranged(80, 1, 100)

    @property
    def mode(self) -> str:
        if self.mask is not None:
            return "inpaint"
        return "img2img" if self.image is not None else "txt2img"

    @property
    def works_at_image_size(self) -> bool:
        """img2img (and Flux's inpainting) work at the input image's own size."""
        return self.image is not None and (self.mask is None or self.inpaints_at_image_size)

    def reference_images(self) -> tuple:
        """Reference images to edit from (files, as `image`): a request class of a family
        whose pipelines take them declares them; this one has none."""
        return ()

    def stacked_loras(self) -> list[tuple[str | os.PathLike, float]]:
        """The LoRAs stacked on the main weights, in order: extra_lora, then `loras`."""
        stacked = [(self.extra_lora, self.extra_lora_scale)] if self.extra_lora else []
        return stacked + list((self.loras or {}).items())

    def sized(self) -> tuple[GenerationRequest, list[str]]:
        """The request with its output width and height decided, and notes for the log."""
        return self, []


# Replicate's Flux predictor's aspect ratios (about one megapixel, sides multiples of 64).
ASPECT_RATIOS = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "21:9": (1536, 640),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "4:5": (896, 1088),
    "5:4": (1088, 896),
    "3:4": (896, 1152),
    "4:3": (1152, 896),
    "9:16": (768, 1344),
    "9:21": (640, 1536),
}
CUSTOM = "custom"
# FLUX.1-dev embeds the guidance scale (guidance-distilled); schnell (timestep-distilled) not.
FLUX_VARIANTS = ("dev", "schnell")
FLUX_MIN_SIDE, FLUX_MAX_SIDE = 256, 1440


@dataclass(frozen=True)
class FluxGenerationRequest(GenerationRequest):
    """Replicate's Flux predictor's inputs (FLUX.1 bases): the size comes from `aspect_ratio`
    (`custom`: width and height, rounded to 16) or from the input image; guidance is FLUX.1's
    distilled guidance (no negative prompt); LoRA scales may be negative."""

    size_multiple: ClassVar[int] = FLUX.pixel_multiple
    inpaints_at_image_size: ClassVar[bool] = True

    width: int | None = ranged(None, FLUX_MIN_SIDE, FLUX_MAX_SIDE)
    height: int | None = ranged(None, FLUX_MIN_SIDE, FLUX_MAX_SIDE)
    num_inference_steps: int = ranged(28, 1, 50)
    guidance_scale: float = ranged(3.5, 0.0, 10.0)
    lora_scale: float = ranged(1.0, -1.0, 2.0)
    extra_lora_scale: float = ranged(1.0, -1.0, 2.0)
    apply_watermark: bool = False  # Replicate's Flux model marks nothing
    output_format: str = one_of("webp", OUTPUT_FORMATS)
    output_quality: int = ranged(90, 0, 100)
    aspect_ratio: str = one_of("1:1", (*ASPECT_RATIOS, CUSTOM))
    model: str = one_of("dev", FLUX_VARIANTS)  # must be the variant the deployment serves

    def sized(self) -> tuple[FluxGenerationRequest, list[str]]:
        if self.aspect_ratio != CUSTOM:
            notes = []
            width, height = ASPECT_RATIOS[self.aspect_ratio]
            if self.width is not None or self.height is not None:
                notes.append(
                    f"width and height are used only with aspect_ratio='custom': "
                    f"{self.aspect_ratio} gives {width}x{height}."
                )
            return replace(self, width=width, height=height), notes
        if self.width is None or self.height is None:
            raise InvalidRequestError(
                "aspect_ratio='custom' needs width and height (256 to 1440), e.g. width=1024, "
                "height=768; or pick a ratio such as 16:9."
            )
        return self, []


def validate(
    request: GenerationRequest, local_dirs: tuple[Path, ...] = ()
) -> tuple[GenerationRequest, list[str]]:
    """Check every input; return the request with its size decided and rounded down to the
    request's size multiple, and notes for the log about anything adjusted. `local_dirs`: the
    folders whose files a request may name by path (the operator's allow-list)."""
    problems = range_problems(request)
    if problems:
        raise InvalidRequestError("Invalid inputs:\n- " + "\n- ".join(problems))
    request, notes = request.sized()
    if request.mask is not None and request.image is None:
        raise InvalidRequestError(
            "A mask was given without an image: inpainting needs the image to paint into. "
            "Pass `image` too, or drop `mask`."
        )
    _check_loras(request.loras)
    references = request.reference_images()
    if len(references) > MAX_REFERENCE_IMAGES:
        raise InvalidRequestError(
            f"images holds {len(references)} images; at most {MAX_REFERENCE_IMAGES} "
            "reference images fit one request."
        )
    try:
        files = {n: check_file_input(n, getattr(request, n), local_dirs) for n in FILE_INPUTS}
        for reference in request.loras or {}:
            check_file_input("loras", reference, local_dirs)
        if references:
            files["images"] = tuple(
                check_file_input(f"images[{index}]", reference, local_dirs)
                for index, reference in enumerate(references)
            )
    except LocalPathRefused as error:
        raise InvalidRequestError(str(error)) from None
    request = replace(request, **files)  # as the client sent them (URL text, or a path)

    sizes, multiple = {}, request.size_multiple
    for name in ("width", "height"):
        value = getattr(request, name)
        sizes[name] = value - value % multiple
        if sizes[name] != value:
            notes.append(f"{name} {value} is not a multiple of {multiple}: using {sizes[name]}.")
    if not request.works_at_image_size:  # that size is checked by working_size
        _check_pixels(request.num_outputs, sizes["width"], sizes["height"])
    return replace(request, **sizes), notes


def _check_loras(loras) -> None:
    if loras is None:
        return
    if not isinstance(loras, dict):
        raise InvalidRequestError(
            'loras must be a JSON object of LoRA URL to scale, e.g. {"https://…/a.safetensors": '
            f"0.8}}; got a {type(loras).__name__}."
        )
    if len(loras) + 1 > MAX_STACKED_LORAS:
        raise InvalidRequestError(
            f"loras names {len(loras)} LoRAs; at most {MAX_STACKED_LORAS - 1} can be stacked "
            "(with extra_lora)."
        )
    for reference, scale in loras.items():
        number = isinstance(scale, (int, float)) and not isinstance(scale, bool)
        if not number or not math.isfinite(scale) or not 0 <= scale <= MAX_LORA_SCALE:
            raise InvalidRequestError(
                f"loras: the scale of {str(reference)[:80]!r} must be a number between 0 and "
                f"{MAX_LORA_SCALE}, got {scale!r}."
            )


def _check_pixels(count: int, width: int, height: int) -> None:
    pixels = width * height * count
    if pixels > MAX_PIXELS_PER_REQUEST:
        raise InvalidRequestError(
            f"{count} x {width}x{height} is {pixels / 1e6:.1f} megapixels; at most "
            f"{MAX_PIXELS_PER_REQUEST / 1e6:.1f} fit in memory per request. Lower the size or "
            "num_outputs."
        )


def load_image(path, name: str, source: str, mode: str = "RGB") -> Image.Image:
    """Open an input image (any format PIL reads, EXIF orientation applied); `source` names
    it in messages (the URL the client sent, not where it was fetched to)."""
    problem = None
    try:
        with Image.open(path) as opened:
            return ImageOps.exif_transpose(opened).convert(mode)
    except UnidentifiedImageError:  # its own text holds the local path
        problem = "not an image in a format PIL reads"
    except OSError as error:  # e.g. a truncated file
        problem = f"not an image PIL can read: {error}"
    raise InvalidRequestError(f"{name}: {source} is {problem}.")


def working_size(
    image: Image.Image, count: int, multiple: int = SIZE_MULTIPLE
) -> tuple[tuple[int, int], str | None]:
    """The size img2img works at: the input's own, rounded down to `multiple` (as Replicate's
    models do), scaled down to fit the per-request pixel budget and MAX_SIDE. Returns the
    size and a note when it differs from the input's."""
    width, height = image.size
    budget = MAX_PIXELS_PER_REQUEST / count
    scale = min(1.0, math.sqrt(budget / (width * height)), MAX_SIDE / max(width, height))
    size = tuple(
        max(MIN_SIDE, int(side * scale) // multiple * multiple) for side in (width, height)
    )
    if size == (width, height):
        return size, None
    reason = "to fit the size limits" if scale < 1 else f"to multiples of {multiple}"
    return size, f"The input image is {width}x{height}: working at {size[0]}x{size[1]} ({reason})."


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Images with Lanczos; masks bilinear, without ringing: a black (kept) area stays black."""
    if image.size == size:
        return image
    resample = Image.Resampling.BILINEAR if image.mode == "L" else Image.Resampling.LANCZOS
    return image.resize(size, resample)
