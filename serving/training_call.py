"""One Cog training call, after its inputs became configurations: shared by both containers'
`train()` (train.py for SDXL / SD 1.5, train_flux.py for FLUX.1).

    check the file inputs -> fetch and preprocess the upload -> training job -> the tarball,
    handed to Cog
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from families import ModelFamily
from formats.bundle import BUNDLE_FILE
from preprocess import PreprocessConfig, preprocess
from serving.handoff import OutputHandoff
from training.config import TrainingConfig
from training.job import PreparedImages, TrainingJob, run_job
from weights.download import DownloadPolicy
from weights.references import check_file_input, check_model_input
from weights.request_files import fetch_input
from weights.scratch import process_folder, remove_orphans
from weights.settings import EMBEDDED_MODELS, ModelSettings

# The tarball handed to Cog stays until the next training starts; nothing else stays.
HANDOFF = OutputHandoff("sdxl-tuner-training-")
# A training works in such a folder (the upload, the dataset, checkpoints), removed when it
# ends; one that a killed worker left is removed at the next start or training.
WORK_PREFIX = "sdxl-train-"
remove_orphans(WORK_PREFIX)


def train_on_upload(
    config: TrainingConfig,
    preprocess_options: dict,
    input_images,
    base_model: str | None,
    family: ModelFamily,
    inputs: dict,
    dry_run: bool = False,
) -> Path:
    """Train on the upload `input_images` and return the tarball (or the dry run's report).
    `preprocess_options`: PreprocessConfig fields beside the ones the config decides;
    `family`: the container's, whose BASE_MODEL is the default; `inputs`: for the record."""
    # 1. Settings and file inputs, checked before any work.
    print(f"Using seed: {config.seed}")
    settings = ModelSettings.from_env(family)
    input_images = check_file_input("input_images", input_images, settings.local_dirs)
    look_locally = check_model_input("base_model", base_model, settings.local_dirs, EMBEDDED_MODELS)
    preprocessing = PreprocessConfig(
        **{
            **preprocess_options,
            "input_path": Path("upload"),  # the upload once fetched, inside the work folder
            "output_dir": Path("dataset"),  # inside the work folder, made below
            "resolution": config.resolution,
            "token_string": config.token_string,
            "caption_prefix": config.caption_prefix,
            "size_multiple": family.pixel_multiple,
        }
    )
    output = HANDOFF.next_folder()  # the previous training's tarball goes now
    remove_orphans(WORK_PREFIX)
    work = process_folder(WORK_PREFIX)

    def prepare_images() -> PreparedImages:
        policy = DownloadPolicy.from_settings(settings)
        upload = fetch_input("input_images", input_images, work / "upload", policy)
        prepared = preprocess(
            replace(preprocessing, input_path=upload, output_dir=work / "dataset")
        )
        return PreparedImages(prepared.folder, prepared.preview, tuple(prepared.skipped))

    # 2. Base model, images, training and the tarball (training/job.py).
    job = TrainingJob(
        config,
        base_model=str(base_model) if base_model else settings.base_model,
        run_dir=work / "run",
        output=output / ("dry_run.tar" if dry_run else BUNDLE_FILE),
        allow_local_base=look_locally,
        dry_run=dry_run,
        inputs=inputs,
        processes=settings.training_processes,
    )
    try:
        return Path(run_job(job, settings, prepare_images))
    except BaseException:  # failed or canceled (Cog's CancelationException): hand over nothing
        HANDOFF.release()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
