"""The embedded tiny models of every family, built on first use into the model cache.

Real weights cannot be downloaded where tests and the demo run, so each family builds small
models of its real classes and layouts (its `tiny.py`), saved as ordinary diffusers folders
and loaded by exactly the code that loads the real models. Every builder seeds its own
generator, so two builds give byte-identical safetensors.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from families import FAMILIES

# Bump when a builder changes, so cached folders from an older build are not reused.
BUILD_VERSION = 1


def ensure_tiny_model(role: str, cache_dir: Path, family: str = "sdxl") -> Path:
    """Return the folder of the tiny `family` `role` model, building it on first use."""
    model_family = FAMILIES[family]
    if role not in model_family.tiny_roles:
        raise ValueError(
            f"There is no tiny {family} {role!r} model (the {family} family has: "
            f"{', '.join(model_family.tiny_roles)})."
        )
    target = Path(cache_dir) / f"tiny-{family}-{role}-v{BUILD_VERSION}"

    def save(folder: Path) -> None:
        model_family.build_tiny(role).save_pretrained(folder, safe_serialization=True)

    return build_folder_once(target, "model_index.json", save)


def build_folder_once(target: Path, marker: str, save: Callable[[Path], None]) -> Path:
    """Return `target`, first filling it with `save(folder)` unless it already holds `marker`.
    Built beside the target and renamed, so a crash never leaves a half-written model."""
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        save(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / marker).exists():  # not a concurrent builder's win
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
