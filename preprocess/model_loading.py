"""Loading the preprocessing models (BLIP, CLIPSeg, Swin2SR) through `from_pretrained`.

A reference is `tiny` (the embedded test models), a local folder, or a hub id. When the
weights cannot be had, `load_preprocessor` logs why and returns None, and the caller falls
back (prefix-only captions, whole-image masks, Lanczos upscaling).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weights.embedded.tiny_preprocessors import ensure_tiny_preprocessor
from weights.runtime import Runtime
from weights.settings import TINY

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # a transformers PreTrainedModel in eval mode on the runtime's device
    processor: Any  # its processor or image processor
    runtime: Runtime


def load_preprocessor(
    reference: str,
    kind: str,
    model_class,
    processor_class,
    runtime: Runtime,
    cache_dir: Path,
    fallback: str,
) -> LoadedModel | None:
    """Load `reference` as `model_class`, or return None after a warning naming `fallback`."""
    source, revision = resolve_reference(reference, kind, cache_dir)
    pinned = {"revision": revision} if revision else {}
    try:
        # safetensors only: never unpickle downloaded weights.
        model = model_class.from_pretrained(
            source, dtype=runtime.dtype, use_safetensors=True, **pinned
        )
        processor = processor_class.from_pretrained(source, **pinned)
    except (OSError, ValueError) as error:
        logger.warning(
            "No %s weights (%s could not be loaded: %s); %s.",
            kind,
            reference,
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
            fallback,
        )
        return None
    return LoadedModel(model.to(runtime.device).eval(), processor, runtime)


def resolve_reference(reference: str, kind: str, cache_dir: Path) -> tuple[str | Path, str | None]:
    """(folder or hub id, revision) for `tiny`, a local folder, `repo` or `repo@revision`."""
    if reference == TINY:
        return ensure_tiny_preprocessor(kind, cache_dir), None
    path = Path(reference).expanduser()
    if path.exists():
        return path, None
    repo, _, revision = reference.partition("@")
    return repo, revision or None
