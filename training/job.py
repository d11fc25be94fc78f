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
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from families import ModelFamily, detect_family
from formats.bundle import METRICS_FILE, TRAINING_CONFIG_FILE
from training.bundle import bundle_size_report, write_bundle, write_dry_run_report
from training.config import TrainingConfig
from training.loop import STATE_DIR, latest_checkpoint, run_training
from training.processes import launch_command, processes_for, run_launch
from weights.base_models import diffusers_folder, resolve_model
from weights.download import describe_source
from weights.references import is_remote
from weights.runtime import pick_runtime
from weights.settings import ModelSettings
from weights.store import ModelStore

DRY_RUN_TIMED_STEPS = 3
ROOT = Path(__file__).resolve().parents[1]


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
    base_model_name: str | None = None  # how the record names it (default: base_model)
    allow_local_base: bool = True  # False for a base model a request named
    dry_run: bool = False
    resume_from: ResumePoint | None = None
    inputs: dict = field(default_factory=dict)  # recorded in training_config.json
    # Data-parallel processes: None, one per visible GPU; 1 (as under `accelerate launch`
    # already), this process alone.
    processes: int | None = None


@dataclass(frozen=True)
class ResumePoint:
    """Where a run continues from: a checkpoint with its training state, and the record of the
    run that wrote it (empty for a work folder that has none yet)."""

    checkpoint: Path
    record: dict

    @classmethod
    def find(cls, folder: Path, source: str) -> ResumePoint:
        """The newest resumable checkpoint in an unpacked tarball or a work folder (or a
        checkpoint folder itself); `source` names it in messages."""
        folder = Path(folder)
        checkpoint = folder if (folder / STATE_DIR).is_dir() else latest_checkpoint(folder)
        if checkpoint is None or not (checkpoint / STATE_DIR).is_dir():
            raise ValueError(
                f"resume_from: {source} holds no checkpoint to resume from. Resume from the "
                "trained_model.tar of a run with checkpointing_steps > 0 (full fine-tunes "
                "resume only with `python -m training --resume`)."
            )
        record_file = checkpoint.parents[1] / TRAINING_CONFIG_FILE
        record = json.loads(record_file.read_text()) if record_file.is_file() else {}
        return cls(checkpoint, record)

    @classmethod
    def fetch(cls, reference, settings: ModelSettings) -> ResumePoint:
        """From a tarball's URL (fetched and unpacked through the model store), or from the
        operator's own tarball or folder."""
        source = describe_source(str(reference))
        if not is_remote(str(reference)) and Path(reference).is_dir():
            return cls.find(Path(reference), source)
        entry = ModelStore.from_settings(settings).fetch(str(reference))
        return cls.find(entry.content, source)

    @property
    def step(self) -> int:
        return int(self.checkpoint.name.split("-")[-1])

    @property
    def seed(self) -> int | None:
        return self.record.get("config", {}).get("seed")

    def differing_inputs(self, inputs: dict) -> list[str]:
        """The inputs given now that differ from the resumed run's (its record's)."""
        earlier = self.record.get("inputs", {})
        return sorted(
            name
            for name, value in inputs.items()
            if name in earlier and earlier[name] != value and value is not None
        )

    def carry_metrics(self, run_dir: Path) -> None:
        """The earlier run's metrics, into a new work folder (the loop cuts them back to the
        checkpoint's step), so the tarball's loss curve covers the whole run."""
        earlier, ours = self.checkpoint.parents[1] / METRICS_FILE, run_dir / METRICS_FILE
        if earlier.is_file() and not ours.exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(earlier, ours)


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
    config.check_family(base.family)  # before the images: a refused config fails fast
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
    processes = processes_for(config, job.processes or max(1, torch.cuda.device_count()))
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


def _train_in_processes(job: TrainingJob, base: BaseModel, images, processes: int, runtime) -> Path:
    share = job.config.train_batch_size // processes
    print(f"Training data-parallel in {processes} processes, a batch of {share} each.")
    job.run_dir.mkdir(parents=True, exist_ok=True)
    inputs_file = job.run_dir / "inputs.json"
    inputs_file.write_text(json.dumps(job.inputs, default=str))
    command = launch_command(
        job.config, processes, images.folder, job.run_dir, base.folder, job.output, runtime
    )
    command += ["--base-model-name", base.reference, "--inputs", str(inputs_file)]
    if job.resume_from is not None:
        command += ["--resume-from", str(job.resume_from.checkpoint)]
    command += ["--preview", str(images.preview)] if images.preview is not None else []
    run_launch(command, cwd=ROOT)
    return job.output
