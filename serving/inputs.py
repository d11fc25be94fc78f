"""Cog `Input(...)` declarations read from a configuration dataclass's fields: the default,
range and choices of every input are written once, on the field (see `input_ranges`).

Under `SDXL_TUNER_PROFILE=tiny` a few defaults are the tiny models' instead of Replicate's
(`TINY_PROFILE_DEFAULTS`), so a request that sets nothing takes seconds on a CPU; the served
schema shows them, and every other input keeps its default.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from cog import Input, Secret

from generation.request import FluxGenerationRequest, GenerationRequest
from training.config import TrainingConfig
from training.flux_inputs import FluxTrainingInputs
from weights.settings import tiny_profile

TINY_PROFILE_DEFAULTS: dict[type, dict[str, Any]] = {
    TrainingConfig: {"resolution": 64, "max_train_steps": 20},
    FluxTrainingInputs: {"resolution": "64", "steps": 20},
    GenerationRequest: {"width": 64, "height": 64, "num_inference_steps": 4},
    FluxGenerationRequest: {
        "aspect_ratio": "custom",
        "width": 256,  # Replicate's smallest custom size
        "height": 256,
        "num_inference_steps": 4,
    },
}


def tiny_profile_defaults(config: type) -> dict[str, Any]:
    """The tiny profile's defaults of `config`'s inputs: its own, or those of the nearest
    class it extends (a container's request class may extend another's)."""
    return next(
        (TINY_PROFILE_DEFAULTS[c] for c in config.__mro__ if c in TINY_PROFILE_DEFAULTS), {}
    )


def declared(config: type, name: str, description: str) -> Any:
    """The `Input` for `config`'s field `name`, with its default, bounds and choices."""
    found = {f.name: f for f in fields(config)}
    if name not in found:
        raise KeyError(f"{config.__name__} has no field {name!r} to declare as an input.")
    field, meta = found[name], found[name].metadata
    choices = meta.get("choices")
    default = None if field.default is MISSING else field.default
    if tiny_profile():
        default = tiny_profile_defaults(config).get(name, default)
    return Input(
        default=default,
        description=description,
        ge=meta.get("ge"),
        le=meta.get("le"),
        max_length=meta.get("max_length"),
        choices=list(choices) if choices is not None else None,
    )


def field_inputs(config: type, inputs: dict) -> dict:
    """The entries of `inputs` that are fields of `config`."""
    names = {f.name for f in fields(config)}
    return {name: value for name, value in inputs.items() if name in names}


def revealed(inputs: dict) -> dict:
    """`inputs` with each Cog `Secret` replaced by its value, for the code that uses it. The
    inputs kept for the record hold the `Secret`, which writes itself as asterisks."""
    return {k: v.get_secret_value() if isinstance(v, Secret) else v for k, v in inputs.items()}
