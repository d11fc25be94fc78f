"""A training job from start to tarball: the one sequence behind Cog's `train()` and
`python -m training`.

    base model (its family resolved once) -> training images -> [dry run] -> training loop
    -> weights tarball

The training images come from the caller's `prepare()`: `train()` preprocesses an upload there,
`python -m training` names a folder that is already prepared (formats/dataset_folder.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from families import ModelFamily, detect_family
from training.bundle import bundle_size_report, write_bundle, write_dry_run_report
from training.config import TrainingConfig
from training.loop import run_training
from weights.base_models import diffusers_folder, resolve_model
from weights.runtime import pick_runtime
from weights.settings import ModelSettings

DRY_RUN_TIMED_STEPS = 3


@dataclass(frozen=True)
class PreparedImages:
    folder: Path  # a prepared dataset folder
    preview: Path | None = None  # the contact sheet of crops, masks and captions
    skipped: tuple[tuple[str, str], ...] = ()  # (file in the upload, why it was not used)


@dataclass(frozen=True)
class BaseModel:
    reference: str  # as the user named it (for the record and the model card)
    folder: Path  # a local diffusers folder
    family: ModelFamily


@dataclass(frozen=True)
class TrainingJob:
    config: TrainingConfig
    base_model: str
    run_dir: Path  # the loop's checkpoints, samples and metrics
    output: Path  # the tarball (or, for a dry run, the report) to write
    allow_local_base: bool = True  # False for a base model a request named
    dry_run: bool = False
    resume_from: Path | None = None
    inputs: dict = field(default_factory=dict)  # recorded in training_config.json


def resolve_base(reference: str, settings: ModelSettings, allow_local: bool = True) -> BaseModel:
    """The base model as a diffusers folder, with its family read from its config."""
    source = resolve_model(reference, "base", settings.cache_dir, allow_local=allow_local)
    folder = diffusers_folder(source, settings.cache_dir, settings.single_file_config)
    return BaseModel(reference, folder, detect_family(folder))


def run_job(
    job: TrainingJob, settings: ModelSettings, prepare: Callable[[], PreparedImages]
) -> Path | None:
    """Run `job`; returns the tarball (or the dry run's report), None in processes other than
    the main one of a data-parallel run."""
    config = job.config
    # 1. Where to run, and the base model (before the images: a bad reference fails fast).
    runtime = pick_runtime(settings.device, settings.dtype)
    base = resolve_base(job.base_model, settings, job.allow_local_base)
    print(f"Base model: {base.reference} ({base.family.title}), training at {config.resolution}px")

    # 2. The training images.
    started = time.perf_counter()
    images = prepare()
    preprocess_seconds = time.perf_counter() - started

    # 3. A dry run times a few steps and reports the plan instead of training.
    if job.dry_run:
        timing = run_training(
            config,
            images.folder,
            base.folder,
            job.run_dir,
            runtime,
            timing_steps=DRY_RUN_TIMED_STEPS,
            family=base.family,
        )
        return write_dry_run_report(timing, images, job.output, preprocess_seconds)

    # 4. Train.
    result = run_training(
        config,
        images.folder,
        base.folder,
        job.run_dir,
        runtime,
        job.resume_from,
        family=base.family,
    )
    if not result.is_main_process:
        return None

    # 5. The weights tarball.
    result.phase_seconds = {"preprocess": preprocess_seconds, **result.phase_seconds}
    bundle = write_bundle(
        result, job.output, base.reference, preview=images.preview, inputs=job.inputs
    )
    print("Time per phase: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.phase_seconds.items()))
    print(bundle_size_report(bundle, settings.max_download_bytes))
    return bundle
