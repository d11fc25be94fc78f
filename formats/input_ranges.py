"""Ranges and choices of inputs, declared once on the field of a configuration dataclass.

`GenerationRequest` and `TrainingConfig` declare each input's default and its range (or
choices) here; their checks read the same declarations (`range_problems`), and the Cog entry
files build their `Input(...)` from them (`serving.inputs.declared`), so the schema a client
sees and the checks behind it cannot drift apart.
"""

from __future__ import annotations

import random
from dataclasses import field, fields

# The largest integer every JSON client carries exactly (JavaScript's MAX_SAFE_INTEGER), and
# that Cog's schema, which stores bounds as floats, shows exactly; torch takes any of them.
SEED_MIN, SEED_MAX = 0, 2**53 - 1


def ranged(default, ge=None, le=None):
    """A field whose value must lie in [ge, le] (either bound may be open)."""
    return field(default=default, metadata={"ge": ge, "le": le})


def one_of(default, choices):
    return field(default=default, metadata={"choices": tuple(choices)})


def text(default, max_length: int):
    """A text field of at most `max_length` characters."""
    return field(default=default, metadata={"max_length": max_length})


def seed_field():
    """An optional seed: empty draws one (`random_seed`)."""
    return ranged(None, SEED_MIN, SEED_MAX)


def random_seed() -> int:
    """A fresh seed for a run that was given none (32 bits: short enough to copy from a log)."""
    return random.SystemRandom().randrange(2**32)


def range_problems(instance) -> list[str]:
    """One message per field whose value is outside its declared range or choices."""
    problems = []
    for declared in fields(instance):
        value, meta = getattr(instance, declared.name), declared.metadata
        if value is None:
            continue
        if "choices" in meta and value not in meta["choices"]:
            problems.append(
                f"{declared.name}={value!r}: use one of {', '.join(map(str, meta['choices']))}."
            )
        if "max_length" in meta and len(value) > meta["max_length"]:
            problems.append(
                f"{declared.name} has {len(value):,} characters: at most {meta['max_length']}."
            )
            continue
        low, high = meta.get("ge"), meta.get("le")
        outside = (low is not None and value < low) or (high is not None and value > high)
        not_a_number = value != value and (low, high) != (None, None)  # NaN passes comparisons
        if outside or not_a_number:
            problems.append(f"{declared.name}={value}: must be {_describe(low, high)}.")
    return problems


def _describe(low, high) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f"at least {low}" if low is not None else f"at most {high}"
