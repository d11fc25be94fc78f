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
from serving.containers import container_of
from serving.handoff import OutputHandoff
from training.bundle import write_pretrained_bundle
from training.config import TrainingConfig
from training.hub_upload import upload_bundle
from training.job import Accounts, PreparedImages, TrainingJob, run_job
from training.resume import ResumePoint
from weights.download import DownloadPolicy, describe_source
from weights.references import check_file_input, check_model_input
from weights.request_files import fetch_input
from weights.scratch import process_folder, remove_orphans
from weights.settings import EMBEDDED_MODELS, HubSettings, ModelSettings
from weights.store import ModelStore
from weights.trained_files import TrainedWeights, WeightsFormat

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
    accounts: Accounts = Accounts(),
    resume_from=None,
) -> Path:
    """Train on the upload `input_images` and return the tarball (or the dry run's report).
    `preprocess_options`: PreprocessConfig fields beside the ones the config decides;
    `family`: the container's, whose BASE_MODEL is the default and whose container says which
    families it trains; `inputs`: for the record; `accounts`: W&B and the hub; `resume_from`:
    an earlier run's tarball to continue from its newest checkpoint."""
    # 1. Settings and file inputs, checked before any work.
    settings = ModelSettings.from_env(family)
    if input_images is None:
        raise ValueError("input_images is empty: give a .zip or .tar of the training photos.")
    input_images = check_file_input("input_images", input_images, settings.local_dirs)
    resume_from = check_file_input("resume_from", resume_from, settings.local_dirs)
    look_locally = check_model_input("base_model", base_model, settings.local_dirs, EMBEDDED_MODELS)
    resume = ResumePoint.fetch(resume_from, settings) if resume_from else None
    if resume is not None:
        config = _resumed_config(config, resume, inputs)
    print(f"Using seed: {config.seed}")
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
        return PreparedImages(
            prepared.folder,
            prepared.preview,
            tuple(prepared.skipped),
            sources=tuple(image.source for image in prepared.images),
            upscaled=tuple(image.upscaled for image in prepared.images),
        )

    # 2. Base model, images, training and the tarball (training/job.py).
    job = TrainingJob(
        config,
        base_model=str(base_model) if base_model else settings.base_model,
        run_dir=work / "run",
        output=output / ("dry_run.tar" if dry_run else BUNDLE_FILE),
        allow_local_base=look_locally,
        dry_run=dry_run,
        resume_from=resume,
        inputs=inputs,
        processes=settings.training_processes,
        check_base=container_of(family).check_trains,
        wandb_api_key=accounts.wandb_api_key,
    )
    try:
        bundle = Path(run_job(job, settings, prepare_images))
    except BaseException:  # failed or canceled (Cog's CancelationException): hand over nothing
        HANDOFF.release()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if accounts.hub is not None and not dry_run:
        upload_bundle(bundle, accounts.hub, HubSettings.from_env().endpoint)
    return bundle


def package_pretrained_lora(
    url: str, family: ModelFamily, trigger_word: str, inputs: dict, accounts: Accounts
) -> Path:
    """The tarball of a LoRA trained elsewhere, without training: fetched through the model
    store (checked to be a LoRA of `family` before it is kept), packaged as a trained one."""
    name = "skip_training_and_use_pretrained_hf_lora_url"
    settings = ModelSettings.from_env(family)
    check_file_input(name, url, settings.local_dirs)
    store = ModelStore.from_settings(settings)
    store.trained_weights(url, _check_lora(family, name))  # a refused file is not kept
    lora = store.trained_weights(url).lora  # where the store keeps it (a cache hit)
    output = HANDOFF.next_folder()
    try:
        bundle = write_pretrained_bundle(
            lora, describe_source(url), output / BUNDLE_FILE, family, trigger_word, inputs
        )
    except BaseException:
        HANDOFF.release()
        raise
    print(f"Packaged {describe_source(url)} as {BUNDLE_FILE} without training.")
    if accounts.hub is not None:
        upload_bundle(bundle, accounts.hub, HubSettings.from_env().endpoint)
    return bundle


def _check_lora(family: ModelFamily, name: str):
    """A store reader that accepts a bare LoRA file of `family` and refuses anything else."""

    def check(weights: TrainedWeights) -> None:
        if weights.format not in (WeightsFormat.LORA_DIFFUSERS, WeightsFormat.LORA_KOHYA):
            raise ValueError(
                f"{name}: {weights.source} is not a single LoRA .safetensors file; give the "
                "URL of one, e.g. https://huggingface.co/OWNER/REPO/resolve/main/lora.safetensors"
            )
        if weights.family is not family:
            told = weights.family.title if weights.family else "no family its names tell"
            raise ValueError(
                f"{name}: {weights.source} is a LoRA for {told}, not {family.title}: this "
                f"container serves {family.title} LoRAs only."
            )

    return check


def _resumed_config(config: TrainingConfig, resume: ResumePoint, inputs: dict) -> TrainingConfig:
    """The run continues with the resumed run's seed unless one is given; inputs that differ
    from that run's are named, since the continuation is exact only with the same ones."""
    if inputs.get("seed") is None and resume.seed is not None:
        config = replace(config, seed=resume.seed)
    differing = resume.differing_inputs({k: v for k, v in inputs.items() if k != "resume_from"})
    if differing:
        print(
            f"resume_from: {', '.join(differing)} differ from the resumed run's; the result "
            "will differ from an uninterrupted run with these inputs."
        )
    return config
