"""Cog `Input(...)` declarations read from a configuration dataclass's fields: the default,
range and choices of every input are written once, on the field (see `input_ranges`)."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from cog import Input, Secret


def declared(config: type, name: str, description: str) -> Any:
    """The `Input` for `config`'s field `name`, with its default, bounds and choices."""
    found = {f.name: f for f in fields(config)}
    if name not in found:
        raise KeyError(f"{config.__name__} has no field {name!r} to declare as an input.")
    field, meta = found[name], found[name].metadata
    choices = meta.get("choices")
    return Input(
        default=None if field.default is MISSING else field.default,
        description=description,
        ge=meta.get("ge"),
        le=meta.get("le"),
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
