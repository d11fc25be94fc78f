"""What a generation request asks for, its limits (one place; predict.py declares the same
ranges to Cog), and the checks that turn bad input into clear errors before any work."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from generation.schedulers import DEFAULT_SCHEDULER, SCHEDULERS

REFINE_MODES = ("no_refiner", "expert_ensemble_refiner", "base_image_refiner")
OUTPUT_FORMATS = ("png", "webp", "jpg")
MAX_OUTPUTS = 4
MAX_STEPS = 500
MIN_GUIDANCE, MAX_GUIDANCE = 1.0, 50.0
MAX_LORA_SCALE = 4.0  # LoRAs are often used above 1 (the reference stopped at 1)
MIN_SIDE = 64
SIZE_MULTIPLE = 8  # the VAE downsamples by 8
# Pixels per request (all outputs together): 4 images of 1536x1536, or one of 3072x3072.
MAX_PIXELS_PER_REQUEST = 4 * 1536 * 1536


class InvalidRequestError(ValueError):
    """The request's inputs are invalid; the message says which and what to do."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str = "An astronaut riding a rainbow unicorn"
    negative_prompt: str = ""
    image: Path | None = None
    mask: Path | None = None
    width: int | None = None  # None: the model family's native resolution
    height: int | None = None
    num_outputs: int = 1
    scheduler: str = DEFAULT_SCHEDULER
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    prompt_strength: float = 0.8
    seed: int | None = None
    refine: str = "no_refiner"
    high_noise_frac: float = 0.8
    refine_steps: int | None = None
    apply_watermark: bool = True
    lora_scale: float = 0.6
    replicate_weights: str | None = None
    extra_lora: str | None = None
    extra_lora_scale: float = 0.6
    disable_safety_checker: bool = False
    output_format: str = "png"
    output_quality: int = 80

    @property
    def mode(self) -> str:
        if self.mask is not None:
            return "inpaint"
        return "img2img" if self.image is not None else "txt2img"


def validate(request: GenerationRequest) -> tuple[GenerationRequest, list[str]]:
    """Check every input; return the request with sizes rounded to multiples of 8, and notes
    for the log about anything adjusted."""
    notes = []
    if request.mask is not None and request.image is None:
        raise InvalidRequestError(
            "A mask was given without an image: inpainting needs the image to paint into. "
            "Pass `image` too, or drop `mask`."
        )
    _in_range("num_outputs", request.num_outputs, 1, MAX_OUTPUTS)
    _in_range("num_inference_steps", request.num_inference_steps, 1, MAX_STEPS)
    _in_range("guidance_scale", request.guidance_scale, MIN_GUIDANCE, MAX_GUIDANCE)
    _in_range("prompt_strength", request.prompt_strength, 0.0, 1.0)
    _in_range("high_noise_frac", request.high_noise_frac, 0.0, 1.0)
    _in_range("lora_scale", request.lora_scale, 0.0, MAX_LORA_SCALE)
    _in_range("extra_lora_scale", request.extra_lora_scale, 0.0, MAX_LORA_SCALE)
    _in_range("output_quality", request.output_quality, 1, 100)
    if request.refine_steps is not None:
        _in_range("refine_steps", request.refine_steps, 1, MAX_STEPS)
    _one_of("scheduler", request.scheduler, SCHEDULERS)
    _one_of("refine", request.refine, REFINE_MODES)
    _one_of("output_format", request.output_format, OUTPUT_FORMATS)

    sizes = {}
    for name in ("width", "height"):
        value = getattr(request, name)
        if value < MIN_SIDE:
            raise InvalidRequestError(f"{name} must be at least {MIN_SIDE} pixels, got {value}.")
        sizes[name] = value - value % SIZE_MULTIPLE
        if sizes[name] != value:
            notes.append(f"{name} {value} is not a multiple of 8: using {sizes[name]}.")
    pixels = sizes["width"] * sizes["height"] * request.num_outputs
    if pixels > MAX_PIXELS_PER_REQUEST:
        raise InvalidRequestError(
            f"{request.num_outputs} x {sizes['width']}x{sizes['height']} is {pixels / 1e6:.1f} "
            f"megapixels; at most {MAX_PIXELS_PER_REQUEST / 1e6:.1f} fit in memory per request. "
            "Lower the size or num_outputs."
        )
    return replace(request, **sizes), notes


def load_image(path: Path, name: str, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Open an input image (any format PIL reads, EXIF orientation applied) at `size`."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert(mode)
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidRequestError(
            f"The {name} input ({Path(path).name}) is not an image PIL can read: {error}"
        ) from None
    if image.size != size:
        # Masks without Lanczos ringing: a black (kept) area must stay exactly black.
        resample = Image.Resampling.BILINEAR if mode == "L" else Image.Resampling.LANCZOS
        image = image.resize(size, resample)
    return image


def _in_range(name: str, value, low, high) -> None:
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must be between {low} and {high}, got {value}.")


def _one_of(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise InvalidRequestError(f"Unknown {name} {value!r}: use one of {', '.join(allowed)}.")
