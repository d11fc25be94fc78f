"""A training job from start to tarball: the one sequence behind Cog's `train()` and
`python -m training`.

    base model (its family resolved once) -> training images -> [dry run] -> training loop
    -> weights tarball

The training images come from the caller's `prepare()`: `train()` preprocesses an upload there,
`python -m training` names a folder that is already prepared (formats/dataset_folder.py). With
several GPUs, `train()`'s job trains data-parallel through `python -m training` under
`accelerate launch` (training/processes.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from families import ModelFamily, detect_family
from training.bundle import bundle_size_report, write_bundle, write_dry_run_report
from training.config import TrainingConfig
from training.hub_upload import HubUpload
from training.loop import run_training
from training.processes import data_parallel, launch_command, run_launch
from training.resume import ResumePoint
from weights.base_models import diffusers_folder, resolve_model
from weights.runtime import pick_runtime
from weights.settings import ModelSettings

DRY_RUN_TIMED_STEPS = 3
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PreparedImages:
    folder: Path  # a prepared dataset folder
    preview: Path | None = None  # the contact sheet of crops, masks and captions
    skipped: tuple[tuple[str, str], ...] = ()  # (file in the upload, why it was not used)
    # Per image, in the dataset folder's order: its name in the upload, and whether it was
    # smaller than its training size (upscaled). Empty: not known (a folder prepared earlier).
    sources: tuple[str, ...] = ()
    upscaled: tuple[bool, ...] = ()


@dataclass(frozen=True)
class BaseModel:
    reference: str  # as the user named it (for the record and the model card)
    folder: Path  # a local diffusers folder
    family: ModelFamily


@dataclass(frozen=True)
class Accounts:
    """The user's accounts a job reports to besides Cog: the key of the Weights & Biases run
    its config names (`wandb_project`), and the hub repository its LoRA is uploaded to."""

    wandb_api_key: str | None = field(default=None, repr=False)
    hub: HubUpload | None = None


@dataclass(frozen=True)
class TrainingJob:
    config: TrainingConfig
    base_model: str
    run_dir: Path  # the loop's checkpoints, samples and metrics
    output: Path  # the tarball (or, for a dry run, the report) to write
    base_model_name: str | None = None  # how the record names it (default: base_model)
    allow_local_base: bool = True  # False for a base model a request named
    dry_run: bool = False
    resume_from: ResumePoint | None = None
    inputs: dict = field(default_factory=dict)  # recorded in training_config.json
    # Data-parallel processes: None, one per visible GPU; 1 (as under `accelerate launch`
    # already), this process alone.
    processes: int | None = None
    # Raises for a base model of a family the caller does not train (the container's trainer,
    # serving/containers.py): (family, base_model) -> None. None: every family.
    check_base: Callable[[ModelFamily, str], None] | None = None
    # For the Weights & Biases run the config names (`wandb_project`); never recorded.
    wandb_api_key: str | None = field(default=None, repr=False)


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
    runtime = pick_runtime(settings.device, settings.dtype, settings.speed)
    base = resolve_base(job.base_model, settings, job.allow_local_base)
    base = BaseModel(job.base_model_name or base.reference, base.folder, base.family)
    if job.check_base is not None:  # before the images: a refused base fails fast
        job.check_base(base.family, base.reference)
    config.check_family(base.family)
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

    # 4. Train, here or data-parallel in several processes (which write the tarball).
    processes = job.processes or max(1, torch.cuda.device_count())
    if job.resume_from is not None:
        print(f"Resuming from step {job.resume_from.step}.")
        job.resume_from.carry_metrics(job.run_dir)
    if processes > 1:
        return _train_in_processes(job, base, images, processes, runtime)
    checkpoint = job.resume_from.checkpoint if job.resume_from else None
    result = run_training(
        config,
        images.folder,
        base.folder,
        job.run_dir,
        runtime,
        checkpoint,
        family=base.family,
        wandb_api_key=job.wandb_api_key,
    )
    if not result.is_main_process:
        return None

    # 5. The weights tarball.
    result.phase_seconds = {"preprocess": preprocess_seconds, **result.phase_seconds}
    bundle = write_bundle(
        result,
        job.output,
        base.reference,
        preview=images.preview,
        inputs=job.inputs,
        dataset=images.folder,
    )
    print("Time per phase: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.phase_seconds.items()))
    print(bundle_size_report(bundle, settings.max_download_bytes))
    return bundle


def _train_in_processes(job: TrainingJob, base: BaseModel, images, processes: int, runtime) -> Path:
    recipe = data_parallel(job.config, processes)
    print(recipe.describe())
    job.run_dir.mkdir(parents=True, exist_ok=True)
    inputs_file = job.run_dir / "inputs.json"
    inputs_file.write_text(json.dumps(job.inputs, default=str))
    command = launch_command(
        job.config, recipe, images.folder, job.run_dir, base.folder, job.output, runtime
    )
    command += ["--base-model-name", base.reference, "--inputs", str(inputs_file)]
    if job.resume_from is not None:
        command += ["--resume-from", str(job.resume_from.checkpoint)]
    command += ["--preview", str(images.preview)] if images.preview is not None else []
    key = job.wandb_api_key  # wandb reads it there; never on a command line
    run_launch(command, cwd=ROOT, secrets={"WANDB_API_KEY": key} if key else {})
    return job.output
