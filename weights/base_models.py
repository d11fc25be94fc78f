"""Resolve a base-model reference to local files, and load pipelines from them.

A reference is one of:
- `tiny` / `tiny-sd15` / `tiny-flux`: the embedded tiny SDXL / SD 1.5 / FLUX.1 (built on
  first use);
- `toy` / `toy-flux`: the tiny SDXL / FLUX.1 pretrained on the toy world (assembled on first
  use);
- a Hugging Face repo id: only what the pipeline needs is downloaded (configs, tokenizers,
  safetensors weights of the components in model_index.json; the fp16 variant when running
  in half precision), under HF_HOME, honouring HF_HUB_OFFLINE;
- a local diffusers folder;
- a single-file SDXL checkpoint `.safetensors` (local path or http(s) URL), loaded with
  diffusers' single-file loader;
- an http(s) URL of a tar / zip of a diffusers folder (fetched through the model store).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import diffusers
import torch

from families import detect_family, family_of_tiny_model
from weights.embedded.tiny import build_folder_once, ensure_tiny_model
from weights.embedded.toy import ensure_toy_model
from weights.embedded.toy_flux import ensure_toy_flux_model
from weights.references import is_remote
from weights.runtime import Runtime
from weights.settings import (
    PROFILE_VARIABLE,
    TOY,
    TOY_FLUX,
    HubSettings,
    ModelSettings,
)
from weights.store import ModelStore
from weights.trained_files import refuse_pickle

FP16_VARIANT = "fp16"
CONFIG_PATTERNS = ["model_index.json"]
COMPONENT_FILE_PATTERNS = ["*.json", "*.txt"]  # configs, tokenizer vocabularies and merges


class ModelUnavailableError(RuntimeError):
    """A base model could not be found locally or fetched."""


def resolve_model(
    reference: str,
    role: str,
    cache_dir: Path,
    variant: str | None = None,
    store: ModelStore | None = None,
    allow_local: bool = True,
) -> Path:
    """Local files for `reference`: a diffusers folder, or a single-file `.safetensors`
    checkpoint. `variant="fp16"` prefers the hub's half-precision weights. `allow_local=False`
    (a reference from a request) never reads a local path: anything else is a hub id."""
    tiny_family = family_of_tiny_model(reference)
    if tiny_family is not None:
        return ensure_tiny_model(role, cache_dir, family=tiny_family.name)
    toy_model = {TOY: ensure_toy_model, TOY_FLUX: ensure_toy_flux_model}.get(reference)
    if toy_model is not None:
        return toy_model(role, cache_dir)
    refuse_pickle(reference)
    if is_remote(reference):
        settings = dataclasses.replace(ModelSettings.from_env(), cache_dir=Path(cache_dir))
        store = store or ModelStore.from_settings(settings)
        if _is_single_file(reference):
            return store.fetch(reference).content
        return store.diffusers_folder(reference)
    path = Path(reference).expanduser()
    if not allow_local:
        return _download_from_hub(reference, variant, role)
    if path.is_file() and _is_single_file(reference):
        return path
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelUnavailableError(
                f"{path} is not a diffusers model folder (no model_index.json) or a "
                "single-file .safetensors checkpoint."
            )
        return path
    return _download_from_hub(reference, variant, role)


def hub_variant(runtime: Runtime) -> str | None:
    """Half-precision runs fetch the hub's fp16 weights: half the download, same result."""
    return FP16_VARIANT if runtime.dtype in (torch.float16, torch.bfloat16) else None


def hub_file_patterns(model_index: dict, variant: str | None) -> tuple[list[str], list[str]]:
    """(allow, ignore) patterns for only the files a pipeline loads: configs and tokenizers,
    and safetensors weights of the components named in model_index.json."""
    components = [
        name
        for name, value in model_index.items()
        if not name.startswith("_") and isinstance(value, list) and value[0] is not None
    ]
    allow = list(CONFIG_PATTERNS)
    for name in components:
        allow += [f"{name}/{pattern}" for pattern in COMPONENT_FILE_PATTERNS]
        allow.append(f"{name}/*.{variant}.safetensors" if variant else f"{name}/*.safetensors")
    ignore = [] if variant else [f"*.{FP16_VARIANT}.safetensors"]
    return allow, ignore


def diffusers_folder(source: Path, cache_dir: Path, single_file_config: str | None = None) -> Path:
    """`source` as a diffusers folder: itself, or (for a single-file checkpoint) the folder it
    converts to once, cached beside the other models. The trainer loads components one by
    one with `from_pretrained`, which only reads folders."""
    source = Path(source)
    if source.is_dir():
        return source
    digest = hashlib.sha256(f"{source.resolve()}:{source.stat().st_size}".encode()).hexdigest()
    target = Path(cache_dir) / "single-file" / digest[:24]

    def convert(folder: Path) -> None:
        cpu = Runtime(torch.device("cpu"), torch.float32)
        pipeline_class = getattr(diffusers, detect_family(source).txt2img_pipeline)
        pipeline = load_pipeline(pipeline_class, source, cpu, single_file_config)
        pipeline.save_pretrained(folder, safe_serialization=True)

    return build_folder_once(target, "model_index.json", convert)


def load_pipeline(
    pipeline_class,
    source: Path,
    runtime: Runtime,
    single_file_config: str | None = None,
    **components,
):
    """Load `pipeline_class` from a diffusers folder or a single-file checkpoint onto the
    runtime's device and dtype. `single_file_config` is a diffusers folder (or hub id) whose
    configs and tokenizers describe a single-file checkpoint; None lets diffusers infer it
    from the checkpoint's keys (which then needs its configs from the hub or HF_HOME)."""
    source = Path(source)
    if source.is_file():
        pipeline = pipeline_class.from_single_file(
            str(source),
            config=single_file_config,
            dtype=runtime.dtype,
            local_files_only=HubSettings.from_env().offline,
            **components,
        )
    else:
        variant = FP16_VARIANT if _only_variant_weights(source, FP16_VARIANT) else None
        pipeline = pipeline_class.from_pretrained(  # safetensors only: never unpickle
            source, dtype=runtime.dtype, variant=variant, use_safetensors=True, **components
        )
    pipeline = pipeline.to(runtime.device)
    if runtime.uses("channels_last") and getattr(pipeline, "unet", None) is not None:
        pipeline.unet.to(memory_format=torch.channels_last)
    return pipeline


def _download_from_hub(reference: str, variant: str | None, role: str) -> Path:
    """`owner/name` or `owner/name@revision` from the hub: only what the pipeline loads."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, _, revision = reference.partition("@")
    hub = HubSettings.from_env()
    options = dict(cache_dir=hub.cache_dir, local_files_only=hub.offline, revision=revision or None)
    try:
        index = json.loads(
            Path(hf_hub_download(repo_id, "model_index.json", **options)).read_text()
        )
        allow, ignore = hub_file_patterns(index, variant)
        folder = snapshot_download(repo_id, allow_patterns=allow, ignore_patterns=ignore, **options)
        if variant and not _has_variant_weights(Path(folder), index, variant):
            # The repository has no such variant (of some component): its full weights.
            allow, ignore = hub_file_patterns(index, None)
            folder = snapshot_download(
                repo_id, allow_patterns=allow, ignore_patterns=ignore, **options
            )
        return Path(folder)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        variable = {"base": "BASE_MODEL", "refiner": "REFINER_MODEL"}.get(role, "BASE_MODEL")
        raise ModelUnavailableError(
            f"Could not fetch the {role} model {reference!r} from the Hugging Face hub "
            f"({_first_line(error)}). Point {variable} at a local diffusers folder, pre-fill the "
            f"cache under HF_HOME (HF_TOKEN for gated models), or set {PROFILE_VARIABLE}=tiny "
            "for the embedded test models."
        ) from None


def _has_variant_weights(folder: Path, model_index: dict, variant: str) -> bool:
    """Whether every model of the pipeline (a component with a `config.json`; tokenizers and
    schedulers have none) has `*.<variant>.safetensors` weights."""
    allow, _ = hub_file_patterns(model_index, variant)
    parts = {pattern.split("/")[0] for pattern in allow if "/" in pattern}
    models = [name for name in parts if (folder / name / "config.json").is_file()]
    return all(any((folder / name).glob(f"*.{variant}.safetensors")) for name in models)


def _is_single_file(reference: str) -> bool:
    return reference.split("?")[0].lower().endswith(".safetensors")


def _only_variant_weights(folder: Path, variant: str) -> bool:
    """True when the folder's weights exist only as `*.<variant>.safetensors`."""
    weights = list(folder.glob("*/*.safetensors"))
    return bool(weights) and all(w.name.endswith(f".{variant}.safetensors") for w in weights)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
