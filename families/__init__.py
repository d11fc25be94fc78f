"""Every model family the project trains and serves, one module or folder each, registered
here in one line: SDXL, SD 1.5, FLUX.1, FLUX.2 [klein].

A family (families/base.py) holds what makes it different: its components, how a prompt
becomes conditioning, how training calls its denoiser, what it cannot train, its LoRA targets,
the names other tools give its layers, its pipelines, its tiny test model and how it is
recognised. Adding one is adding a folder and a line here (docs/adding-a-family.md).
"""

from __future__ import annotations

from pathlib import Path

from families.base import (
    TEXT_ENCODER_NAMES,
    TOKENIZER_NAMES,
    Conditioning,
    ModelFamily,
    UnknownFamilyError,
    read_json,
)
from families.flux1 import FLUX
from families.flux2_klein import KLEIN
from families.sd15 import SD15
from families.sdxl import SDXL

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (SDXL, SD15, FLUX, KLEIN)}

__all__ = [
    "FAMILIES",
    "FLUX",
    "SD15",
    "SDXL",
    "TEXT_ENCODER_NAMES",
    "TOKENIZER_NAMES",
    "Conditioning",
    "ModelFamily",
    "UnknownFamilyError",
    "detect_family",
    "family_from_weight_names",
    "family_of_tiny_model",
]


def detect_family(model_folder: Path) -> ModelFamily:
    """The family of a diffusers model folder, read from its configs (never from its name):
    the pipeline class in model_index.json, else the denoiser's config. A single-file
    checkpoint is read from its tensor names."""
    folder = Path(model_folder)
    if folder.is_file():
        return _single_file_family(folder)
    pipeline_class = read_json(folder / "model_index.json").get("_class_name")
    for family in FAMILIES.values():
        if pipeline_class in family.pipelines:
            return family
    for family in FAMILIES.values():
        if family.matches_denoiser_config(read_json(folder / family.denoiser / "config.json")):
            return family
    raise UnknownFamilyError(
        f"{folder} is not a model of a supported family ({', '.join(FAMILIES)}): its "
        f"model_index.json names pipeline {pipeline_class!r} and no denoiser config is one of "
        "theirs."
    )


def _single_file_family(checkpoint: Path) -> ModelFamily:
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as tensors:
        names = list(tensors.keys())
    for family in FAMILIES.values():
        if any(name.startswith(family.single_file_prefixes) for name in names):
            return family
    prefixes = [prefix for family in FAMILIES.values() for prefix in family.single_file_prefixes]
    raise UnknownFamilyError(
        f"{checkpoint} is not a checkpoint of a supported family ({', '.join(FAMILIES)}): "
        f"no tensor names start with {' or '.join(prefixes)}."
    )


def family_from_weight_names(names) -> ModelFamily | None:
    """The family trained weights were made for, told from the tensor names of one file (for
    weights that do not record it); None when the names do not tell. A textual-inversion file
    tells by holding exactly the family's keys (one table per text encoder)."""
    names = set(names)
    for family in FAMILIES.values():
        if family.pti_keys and names in (set(family.pti_keys), set(family.embedding_keys)):
            return family
    found = [
        family
        for family in FAMILIES.values()
        if any(marker in name for name in names for marker in family.weight_name_markers)
    ]
    if not found:
        return None
    top = max(family.marker_priority for family in found)
    first = [family for family in found if family.marker_priority == top]
    return first[0] if len(first) == 1 else None


def family_of_tiny_model(name: str) -> ModelFamily | None:
    """The family whose embedded tiny model is called `name` (`tiny`, `tiny-flux`, ...)."""
    return next((f for f in FAMILIES.values() if f.tiny_model == name), None)
