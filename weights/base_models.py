"""Resolve a base-model reference (`tiny`, a local diffusers folder, a hub id) to a local
diffusers folder, and load pipelines from it with the normal `from_pretrained` path."""

from __future__ import annotations

from pathlib import Path

from weights.runtime import Runtime
from weights.settings import TINY
from weights.tiny import ensure_tiny_model

# Only what a diffusers SDXL folder needs: configs, tokenizers and safetensors weights.
HUB_FILE_PATTERNS = ["*.json", "*.txt", "*/*.json", "*/*.txt", "*/*.safetensors"]


class ModelUnavailableError(RuntimeError):
    """A base model could not be found locally or fetched."""


def resolve_model(reference: str, role: str, cache_dir: Path) -> Path:
    """Return a local diffusers folder for `reference` (`tiny`, a folder path or a hub id)."""
    if reference == TINY:
        return ensure_tiny_model(role, cache_dir)
    path = Path(reference).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelUnavailableError(
                f"{path} is not a diffusers model folder (no model_index.json)."
            )
        return path
    return _download_from_hub(reference)


def _download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILE_PATTERNS))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise ModelUnavailableError(
            f"Could not fetch {repo_id!r} from the Hugging Face hub ({_first_line(error)}). "
            "Point BASE_MODEL / REFINER_MODEL at a local diffusers folder, pre-fill the cache "
            "under HF_HOME, or use BASE_MODEL=tiny for the embedded test model."
        ) from None


def load_pipeline(pipeline_class, folder: Path, runtime: Runtime, **components):
    """Load `pipeline_class` from a local folder onto the runtime's device and dtype."""
    pipeline = pipeline_class.from_pretrained(folder, dtype=runtime.dtype, **components)
    return pipeline.to(runtime.device)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
