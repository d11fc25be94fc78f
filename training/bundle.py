"""The weights tarball (the contract is docs/weights-tarball.md): the trained weights in every
layout, the model card, the config, metrics and loss curve, samples, preview and checkpoints,
each at its well-known name (formats/bundle.py), with the manifest that lists them, in one
flat tar written under a temporary name and renamed when complete."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

from families import ModelFamily
from formats.bundle import (
    CHECKPOINTS_DIR,
    DRY_RUN_IMAGES_DIR,
    DRY_RUN_MASKS_DIR,
    DRY_RUN_PLAN_FILE,
    EMBEDDINGS_FILE,
    LORA_FILE,
    LORA_KOHYA_FILE,
    LOSS_PLOT_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    PREVIEW_FILE,
    SAMPLES_DIR,
    TRAINING_CONFIG_FILE,
    UNET_FILE,
    Manifest,
)
from formats.dataset_folder import read_captions
from training.config import TrainingConfig
from training.dataset_review import review_warnings, thumbnail
from training.loop import STATE_DIR, TrainingResult
from weights.download import describe_source
from weights.references import is_remote
from weights.settings import EMBEDDED_MODELS

LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate")


def write_bundle(
    result: TrainingResult,
    output: Path,
    base_model: str,
    preview: Path | None = None,
    inputs: dict | None = None,
    dataset: Path | None = None,
) -> Path:
    """Assemble the bundle from a finished run's work folder and write it to `output` (.tar).
    `dataset`: the prepared dataset folder it trained on, whose captions the record keeps."""
    output, config = Path(output), result.config
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".bundle-") as tmp:
        staging = Path(tmp)
        for file in result.weights_dir.iterdir():
            shutil.copy2(file, staging / file.name)
        # The newest checkpoint keeps the state to resume from (`resume_from`), except a full
        # fine-tune's: three times the UNet in fp32, too large to ship.
        keep_state = not config.trains_full_unet
        for checkpoint in result.checkpoints:
            shutil.copytree(
                checkpoint,
                staging / CHECKPOINTS_DIR / checkpoint.name,
                ignore=None if keep_state else shutil.ignore_patterns(STATE_DIR),
            )
        if (result.work_dir / SAMPLES_DIR).is_dir():
            shutil.copytree(result.work_dir / SAMPLES_DIR, staging / SAMPLES_DIR)
        if preview is not None and Path(preview).is_file():
            shutil.copy2(preview, staging / PREVIEW_FILE)
        if result.metrics_file.is_file():
            shutil.copy2(result.metrics_file, staging / METRICS_FILE)
            plot_loss(result.metrics_file, staging / LOSS_PLOT_FILE)
        record = training_record(result, config, base_model, inputs or {})
        if dataset is not None:  # what each image was trained with, as the trigger's text
            rows = read_captions(dataset)
            record["captions"] = [{"image": r.image_path.name, "caption": r.caption} for r in rows]
        (staging / TRAINING_CONFIG_FILE).write_text(json.dumps(record, indent=2, default=str))
        (staging / MODEL_CARD_FILE).write_text(model_card(result, config, base_model))
        family, token_map = result.family.name, result.token_map
        Manifest.of_folder(staging, family, config.token_string, token_map).write(staging)
        _write_tar(staging, output)
    return output


def write_pretrained_bundle(
    lora: Path, source: str, output: Path, family: ModelFamily, trigger_word: str, inputs: dict
) -> Path:
    """The tarball of a LoRA trained elsewhere (`skip_training_and_use_pretrained_hf_lora_url`):
    the file as `lora.safetensors` unchanged (its own key layout: every loader here reads
    them all), the record and a model card; no training, so no metrics or samples."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "inputs": inputs,
        "family": family.name,
        "mode": "LoRA trained elsewhere, packaged without training",
        "source": source,
        "trigger_word": trigger_word,
        "libraries": {name: version(name) for name in LIBRARIES},
    }
    card = [
        f"# {family.title} LoRA",
        "",
        f"Packaged from {source} without training. Write `{trigger_word}` in prompts if the "
        "LoRA was trained with that trigger word.",
        "",
        "## diffusers",
        "",
        "```python",
        f"from diffusers import {family.txt2img_pipeline}",
        "",
        f'pipe = {family.txt2img_pipeline}.from_pretrained("{family.default_base_model}")',
        f'pipe.load_lora_weights(".", weight_name="{LORA_FILE}")',
        "```",
        "",
    ]
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".bundle-") as tmp:
        staging = Path(tmp)
        shutil.copy2(lora, staging / LORA_FILE)
        (staging / TRAINING_CONFIG_FILE).write_text(json.dumps(record, indent=2, default=str))
        (staging / MODEL_CARD_FILE).write_text("\n".join(card))
        Manifest.of_folder(staging, family.name, trigger_word, {}).write(staging)
        _write_tar(staging, output)
    return output


def _write_tar(staging: Path, output: Path) -> None:
    """Every file under `staging`, flat names relative to it, written whole or not at all."""
    partial = output.with_name(output.name + ".partial")
    with tarfile.open(partial, "w") as tar:
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(staging).as_posix())
    partial.rename(output)


def training_record(result: TrainingResult, config: TrainingConfig, base_model, inputs) -> dict:
    """Every input and derived value: enough to reproduce or audit the run."""
    plan = result.plan
    return {
        "inputs": inputs,
        "config": config.to_json(),
        "base_model": base_model,
        "family": result.family.name,
        "mode": config.mode,
        "trigger_word": config.token_string,
        "token_map": result.token_map,
        "plan": {
            "images": plan.num_images,
            "steps": plan.max_train_steps,
            "epochs": plan.epochs,
            "global_batch_size": plan.global_batch_size,
            "effective_batch_size": plan.effective_batch_size,
            "pivot_step": plan.pivot_step,
            "lora_alpha": config.effective_lora_alpha,
        },
        "summary": result.summary,
        "final_loss": result.final_loss,
        "phase_seconds": {k: round(v, 3) for k, v in result.phase_seconds.items()},
        "libraries": {name: version(name) for name in LIBRARIES},
    }


def plot_loss(metrics_file: Path, image: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line]
    steps = [row["step"] for row in rows]
    losses = [row["loss"] for row in rows]
    smoothed, average = [], None
    for loss in losses:
        average = loss if average is None else 0.9 * average + 0.1 * loss
        smoothed.append(average)
    figure, axes = pyplot.subplots(figsize=(6, 3.5), dpi=100)
    axes.plot(steps, losses, alpha=0.35, label="loss")
    axes.plot(steps, smoothed, label="moving average")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend()
    figure.tight_layout()
    figure.savefig(image)
    pyplot.close(figure)


def model_card(result: TrainingResult, config: TrainingConfig, base_model: str) -> str:
    tokens = result.token_map.get(config.token_string)
    weights, family = result.weights_dir, result.family
    prompt = f"a photo of {tokens or config.token_string}"
    pipeline_class = family.txt2img_pipeline
    sizes = ", ".join(map(str, (*config.bucket_resolutions, config.resolution)))
    encoders = ", ".join(f"pipe.{name}" for name in family.text_encoder_names)
    tokenizers = ", ".join(f"pipe.{name}" for name in family.tokenizer_names)
    lines = [
        f"# {family.title} fine-tune ({config.mode})",
        "",
        f"Base model: `{base_model}`. Trained {result.plan.max_train_steps} steps on "
        f"{result.summary['images']} images at {sizes}px, seed {config.seed}.",
        "",
    ]
    if tokens:
        lines += [
            f"**Trigger:** write `{config.token_string}` in prompts served by this model's "
            f"predictor; elsewhere write `{tokens}` (the trained tokens).",
            "",
        ]
    lines += ["## diffusers", "", "```python", f"from diffusers import {pipeline_class}"]
    if tokens:
        lines.append("from dataset_and_utils import TokenEmbeddingsHandler  # from this project")
    lines += ["", *base_model_loading(base_model, pipeline_class), 'pipe.to("cuda")']
    if (weights / LORA_FILE).is_file() and config.lora_method == "lokr":
        # diffusers' load_lora_weights takes LoRA and DoRA; a LoKr loads model by model.
        lines.append(
            f'pipe.{family.denoiser}.load_lora_adapter(".", weight_name="{LORA_FILE}", '
            f'prefix="{family.denoiser}")'
        )
    elif (weights / LORA_FILE).is_file():
        lines.append(f'pipe.load_lora_weights(".", weight_name="{LORA_FILE}")')
    if (weights / UNET_FILE).is_file():
        lines += [
            "from safetensors.torch import load_file",
            f'pipe.unet.load_state_dict(load_file("{UNET_FILE}"))',
        ]
    if tokens:
        lines += [
            f"handler = TokenEmbeddingsHandler([{encoders}], [{tokenizers}])",
            'handler.load_embeddings("embeddings.pti")',
        ]
    lines += [f'image = pipe("{prompt}").images[0]', "```", ""]
    lines += [f"## {family.other_tools}", ""]
    if (weights / LORA_KOHYA_FILE).is_file():
        lines.append(f"- `{LORA_KOHYA_FILE}`: {family.kohya_file_use}")
    if (weights / EMBEDDINGS_FILE).is_file():
        keys = ", ".join(f"`{key}`" for key in family.embedding_keys)
        lines.append(
            f"- `{EMBEDDINGS_FILE}`: the token vectors as an {family.title} embedding ({keys}); "
            "put it in `embeddings/` under a name such as `mysubject.safetensors` and write "
            "that name where the trigger goes."
        )
    extras = [
        "`training_config.json` (every input and derived value)",
        "`metrics.jsonl` and `loss.png` (the loss per step)",
        "`preview.png` (the training crops and masks)",
    ]
    if config.sample_prompts:
        extras.append(f"`{SAMPLES_DIR}/` (the sample prompts during training)")
    if result.checkpoints:
        extras.append(f"`{CHECKPOINTS_DIR}/` (intermediate weights)")
    lines += ["", "## Files", "", ", ".join(extras) + ".", ""]
    return "\n".join(lines)


def base_model_loading(base_model: str, pipeline_class: str) -> list[str]:
    """Python lines that load the base model the weights were trained on, as `pipe`."""
    if base_model in EMBEDDED_MODELS:
        return [
            f"# `{base_model}` is sdxl-tuner's embedded test model; run this in a checkout of it.",
            "from weights.base_models import resolve_model",
            f'base_folder = resolve_model("{base_model}", "base", ".cache")',
            f"pipe = {pipeline_class}.from_pretrained(base_folder)",
        ]
    if base_model.split("?")[0].lower().endswith(".safetensors"):
        return [f'pipe = {pipeline_class}.from_single_file("{describe_source(base_model)}")']
    if is_remote(base_model):
        return [
            f"# The base model is the diffusers folder packed in {describe_source(base_model)}.",
            f'pipe = {pipeline_class}.from_pretrained("path/to/that/folder")',
        ]
    return [f'pipe = {pipeline_class}.from_pretrained("{base_model}")']


def bundle_size_report(bundle: Path, download_limit: int) -> str:
    """The tarball's size for the log, with a warning when a predictor would refuse it."""
    size = Path(bundle).stat().st_size
    report = f"{Path(bundle).name}: {size / 2**20:.1f} MiB."
    if size > download_limit:
        report += (
            f" That is over the {download_limit / 2**30:.0f} GiB a predictor downloads by "
            "default: raise SDXL_TUNER_MAX_DOWNLOAD_GB there, or keep fewer checkpoints "
            "(checkpointing_steps)."
        )
    return report


def write_dry_run_report(
    timing: TrainingResult, prepared, output: Path, preprocess_seconds: float
) -> Path:
    """The plan of a run that was not started: images used (with their upload names, whether
    they were upscaled, a thumbnail of crop and mask) and skipped with their captions, warnings
    a person can act on, steps, epochs, and the training time estimated from a few timed steps
    on this device. `prepared`: the training images (a dataset folder, its preview, the files
    skipped, the upload names and upscaling of the images)."""
    plan, config = timing.plan, timing.config
    estimate = timing.seconds_per_step * plan.max_train_steps
    rows = read_captions(prepared.folder)
    sources = list(prepared.sources) or [row.image_path.name for row in rows]
    upscaled = list(prepared.upscaled) or [False] * len(rows)
    pictures = {}  # name in the tarball -> bytes
    images = []
    for row, source, was_small in zip(rows, sources, upscaled, strict=True):
        stem = row.image_path.stem
        image = {"image": row.image_path.name, "source": source, "caption": row.caption}
        image |= {"upscaled": was_small, "thumbnail": f"{DRY_RUN_IMAGES_DIR}/{stem}.jpg"}
        pictures[image["thumbnail"]] = thumbnail(row.image_path)
        if row.mask_path is not None:
            image["mask"] = f"{DRY_RUN_MASKS_DIR}/{stem}.png"
            pictures[image["mask"]] = thumbnail(row.mask_path, mask=True)
        images.append(image)
    crops = [row.image_path for row in rows]
    advice = config.method_advice(timing.family)
    report = {
        "mode": config.mode,
        "images": images,
        "skipped": [{"file": name, "reason": reason} for name, reason in prepared.skipped],
        "warnings": review_warnings(
            crops,
            sources,
            upscaled,
            config.resolution,
            [row.caption for row in rows] if config.lora_type == "subject" else None,
        )
        + ([advice] if advice else []),
        "steps": plan.max_train_steps,
        "epochs": plan.epochs,
        "effective_batch_size": plan.effective_batch_size,
        "pivot_step": plan.pivot_step,
        "token_map": timing.token_map,
        "summary": timing.summary,
        "seconds_per_step": round(timing.seconds_per_step, 4),
        "estimated_training_seconds": round(estimate, 1),
        "preprocess_seconds": round(preprocess_seconds, 1),
        "model_load_and_caching_seconds": round(
            timing.phase_seconds.get("model load", 0)
            + timing.phase_seconds.get("latent caching", 0),
            1,
        ),
    }
    print(
        f"Dry run: {len(rows)} images ({len(prepared.skipped)} skipped), "
        f"{plan.max_train_steps} steps = {plan.epochs} epochs at effective batch "
        f"{plan.effective_batch_size}; about {timing.seconds_per_step:.2f}s/step on "
        f"{timing.summary['device']}, so training would take about {estimate / 60:.1f} min."
    )
    for warning in report["warnings"]:
        print(f"Warning: {warning}")
    pictures[DRY_RUN_PLAN_FILE] = json.dumps(report, indent=2).encode()
    if prepared.preview is not None and Path(prepared.preview).is_file():
        pictures[PREVIEW_FILE] = Path(prepared.preview).read_bytes()
    output = Path(output)
    partial = output.with_name(output.name + ".partial")
    with tarfile.open(partial, "w") as tar:
        for name, data in pictures.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    partial.rename(output)
    return output
