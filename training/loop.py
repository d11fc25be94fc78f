"""The training loop, top to bottom: load the base model (SDXL, SD 1.5 or FLUX.1), cache the
latents, add the new tokens and the adapters, then step; save checkpoints and samples on the way and
the final weights at the end. The family's facts (text encoders, conditioning, key layouts)
come from the family (`families/`); nothing here is specific to one family.

One optimizer and one learning-rate scheduler drive every trained parameter for the whole run;
the token embeddings stop at the pivot (`ti_frac`) through their scheduler lambda, not through
a second optimizer. Built on `accelerate`: the same loop runs on one device or data-parallel
under `accelerate launch` (each process takes its slice of every global batch).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from families import ModelFamily, detect_family
from formats.bundle import (
    CHECKPOINTS_DIR,
    METRICS_FILE,
    SAMPLES_DIR,
    checkpoint_folders,
    checkpoint_name,
)
from formats.dataset_folder import read_captions
from formats.tokens import TokenEmbeddingsHandler, apply_token_map
from training.components import (
    TrainingComponents,
    add_lora,
    load_components,
    lora_targets,
    trainable_parameters,
)
from training.config import NUM_TOKENS, TrainingConfig
from training.dataset import CachedLatentsDataset
from training.ema import WeightAverage
from training.export import save_trained_weights
from training.objectives import OBJECTIVES
from training.samples import render_class_images, render_samples
from training.schedule import (
    BatchSchedule,
    TrainingPlan,
    build_lr_scheduler,
    build_optimizer,
    seeded,
)
from training.state_files import load_state, save_state
from training.tracking import RunTracking
from weights.runtime import Runtime

WEIGHTS_DIR = "weights"
CLASS_IMAGES_DIR = "class_images"
LATENTS_DIR = "latents"  # with cache_latents_to_disk; one folder per process
TRACKED_WEIGHTS_DIR = "tracked_weights"  # the weights on their way to the W&B run
STATE_DIR = "training_state"  # optimizer/scheduler/parameters for resuming; not bundled
AVERAGE_FILE = "weight_average.safetensors"  # in STATE_DIR, with ema_decay
MIXED_PRECISION = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "no"}


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; no weights were written for the final result."""


@dataclass
class TrainingResult:
    config: TrainingConfig
    family: ModelFamily
    work_dir: Path
    plan: TrainingPlan
    token_map: dict[str, str]
    summary: dict  # what the start summary printed
    phase_seconds: dict[str, float] = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)
    final_loss: float | None = None
    is_main_process: bool = True  # the process that wrote the weights (accelerate launch)

    @property
    def seconds_per_step(self) -> float:
        """Median step time, the first (warm-up) step left out when there are others."""
        timed = sorted(self.step_seconds[1:] or self.step_seconds)
        return timed[len(timed) // 2] if timed else 0.0

    @property
    def weights_dir(self) -> Path:
        return self.work_dir / WEIGHTS_DIR

    @property
    def metrics_file(self) -> Path:
        return self.work_dir / METRICS_FILE

    @property
    def checkpoints(self) -> list[Path]:
        return checkpoint_folders(self.work_dir / CHECKPOINTS_DIR)


@dataclass
class PhaseClock:
    """Seconds spent in each phase of the run (model load, latent caching, training, ...)."""

    seconds: dict[str, float] = field(default_factory=dict)
    _since: float = field(default_factory=time.perf_counter)

    def done(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._since
        self._since = now


@dataclass(frozen=True)
class TrainingRun:
    """What a run trains, and what writing its weights and checkpoints needs."""

    config: TrainingConfig
    models: TrainingComponents
    handler: TokenEmbeddingsHandler | None  # None: no new tokens
    token_map: dict[str, str]
    trainable: dict[str, torch.Tensor]  # name -> parameter
    runtime: Runtime
    work_dir: Path
    average: WeightAverage | None  # what is saved, when `ema_decay` asks for it

    def saved_weights(self):
        """The weights in the model while they are saved or sampled: the average, if any."""
        return self.average.applied() if self.average else contextlib.nullcontext()


def run_training(
    config: TrainingConfig,
    dataset_folder: Path,
    base_model: Path,
    work_dir: Path,
    runtime: Runtime,
    resume_from: Path | None = None,
    timing_steps: int = 0,
    family: ModelFamily | None = None,
    wandb_api_key: str | None = None,
) -> TrainingResult:
    """Train on a prepared dataset folder (captions.csv + images + masks) and write weights,
    checkpoints, samples and metrics under `work_dir`. `timing_steps` > 0: a dry run that only
    times that many steps (for the estimate) and writes nothing. `family`: the base model's,
    when the caller knows it already (else read from its config). `wandb_api_key`: for the
    Weights & Biases run a `wandb_project` asks for (None: wandb reads WANDB_API_KEY)."""
    work_dir = Path(work_dir)
    with RunTracking(config, wandb_api_key, work_dir) as tracking:
        return _train(
            config,
            dataset_folder,
            base_model,
            work_dir,
            runtime,
            resume_from,
            timing_steps,
            family,
            tracking,
        )


def _train(
    config: TrainingConfig,
    dataset_folder: Path,
    base_model: Path,
    work_dir: Path,
    runtime: Runtime,
    resume_from: Path | None,
    timing_steps: int,
    family: ModelFamily | None,
    tracking: RunTracking,
) -> TrainingResult:
    clock = PhaseClock()

    # 1. Processes, device and precision. Trainable parameters are always fp32; on GPU the
    #    compute runs under bf16 autocast.
    accelerator = Accelerator(
        mixed_precision=MIXED_PRECISION[runtime.dtype],
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=runtime.device.type == "cpu",
        kwargs_handlers=[
            # The first encoder's last layer is unused (SDXL reads the penultimate one).
            DistributedDataParallelKwargs(find_unused_parameters=config.train_text_encoder)
        ],
    )
    device, is_main = accelerator.device, accelerator.is_main_process
    torch.manual_seed(config.seed)
    if not timing_steps:
        tracking.open(is_main)  # before the models load: a refused key fails fast

    # 2. Models, once the config is known to suit their family.
    family = family or detect_family(base_model)
    config.check_family(family)
    models = load_components(
        base_model,
        device,
        runtime.dtype,
        config.trains_full_unet,
        family,
        config.base_quantization,
    )
    if runtime.uses("channels_last") and family.channels_last:
        models.denoiser.to(memory_format=torch.channels_last)
    clock.done("model load")

    # 3. Latents, once per image (and per flip). Captions get the trigger's token string.
    #    Prior preservation: the base model draws the class images first, before anything trains.
    items = read_captions(dataset_folder)
    scales = tuple(size / config.resolution for size in config.bucket_resolutions)
    on_disk = work_dir / LATENTS_DIR / f"process-{accelerator.process_index}"
    dataset = CachedLatentsDataset(
        items,
        models.vae,
        config.flip_augmentation,
        config.use_masks,
        scales,
        cache_dir=on_disk / "images" if config.cache_latents_to_disk else None,
    )
    clock.done("latent caching")
    class_set = None
    if config.num_class_images:
        class_items = render_class_images(models, config, work_dir / CLASS_IMAGES_DIR, accelerator)
        class_set = CachedLatentsDataset(
            class_items,
            models.vae,
            config.flip_augmentation,
            False,
            cache_dir=on_disk / "class_images" if config.cache_latents_to_disk else None,
        )
        clock.done("class images")
    if not (config.sample_prompts and is_main):
        models.vae = None  # not needed any more

    # 4. New tokens <s0><s1> in every tokenizer and text encoder (pivotal tuning).
    handler, token_map = None, {}
    if config.trains_tokens:
        handler = TokenEmbeddingsHandler(models.text_encoders, models.tokenizers, family.pti_keys)
        handler.initialize_new_tokens(
            NUM_TOKENS, torch.Generator().manual_seed(config.seed), config.token_init_word
        )
        for encoder in models.text_encoders:
            encoder.get_input_embeddings().to(torch.float32).requires_grad_(True)
        token_map = {config.token_string: "".join(handler.tokens)}
    captions = [apply_token_map(c, token_map) for c in dataset.captions]

    # 5. Adapters and trainable parameters, in named optimizer groups.
    groups, denoiser_name = [], family.denoiser
    if config.trains_unet_lora:
        targets = family.lora_target_modules
        if config.lora_layers_regex:
            targets = lora_targets(models.denoiser, denoiser_name, config.lora_layers_regex)
        add_lora(
            models.denoiser,
            config.lora_rank,
            config.effective_lora_alpha,
            targets,
            config.lora_method,
        )
        groups.append((f"{denoiser_name}_lora", models.denoiser, config.lora_lr))
    if config.trains_full_unet:
        models.denoiser.requires_grad_(True)
        groups.append((denoiser_name, models.denoiser, config.unet_learning_rate))
    if config.train_text_encoder:
        for name, encoder in models.named_text_encoders().items():
            add_lora(
                encoder,
                config.lora_rank,
                config.effective_lora_alpha,
                family.text_encoder_lora_target_modules,
                config.lora_method,
            )
            groups.append((f"{name}_lora", encoder, config.text_encoder_lr))
    if config.gradient_checkpointing:
        models.denoiser.enable_gradient_checkpointing()
    if runtime.uses("compile"):  # regional: each repeated block compiles once, then is reused
        models.denoiser.compile_repeated_blocks()
    named_models = {denoiser_name: models.denoiser, **models.named_text_encoders()}
    trainable = trainable_parameters(named_models)
    param_groups = []
    for name, model, lr in groups:
        params = {
            n: p
            for n, p in model.named_parameters()
            if p.requires_grad and not _is_embedding(p, models)
        }
        faster = {n for n in params if ".lora_B." in n} if config.lora_plus_ratio != 1 else set()
        param_groups.append(
            {"name": name, "lr": lr, "params": [p for n, p in params.items() if n not in faster]}
        )
        if faster:  # LoRA+: the B matrices in a group of their own, at the higher rate
            param_groups.append(
                {
                    "name": f"{name}_B",
                    "lr": lr * config.lora_plus_ratio,
                    "params": [params[n] for n in faster],
                }
            )
    if handler is not None:
        tables = [e.get_input_embeddings().weight for e in models.text_encoders]
        param_groups.append(
            {"name": "token_embeddings", "lr": config.ti_lr, "params": tables, "pivotal": True}
        )

    # 6. Plan, optimizer, scheduler.
    buckets = list(dataset.buckets().values())
    plan = TrainingPlan.build(config, [len(b) for b in buckets], accelerator.num_processes)
    batches = BatchSchedule(buckets, config.num_repeats, plan.global_batch_size, config.seed)
    optimizer = build_optimizer(config.optimizer, param_groups, config.weight_decay, device)
    lr_scheduler = build_lr_scheduler(optimizer, config, plan)
    trained_models = [
        m for m in named_models.values() if any(p.requires_grad for p in m.parameters())
    ]
    prepared = accelerator.prepare(*trained_models, optimizer)
    wrapped = dict(zip(map(id, trained_models), prepared[:-1], strict=True))
    optimizer = prepared[-1]
    denoiser = wrapped.get(id(models.denoiser), models.denoiser)
    text_encoders = [wrapped.get(id(e), e) for e in models.text_encoders]

    average = None
    if config.ema_decay:  # of what the optimizer trains, but the (retracted) token tables
        averaged = {n: p for n, p in trainable.items() if not _is_embedding(p, models)}
        average = WeightAverage(averaged, config.ema_decay)

    # 7. Resume: parameters, optimizer and scheduler state (and the average); every random draw
    #    is a function of (seed, step), so nothing else is needed to continue exactly.
    start_step = 0
    if resume_from is not None:
        start_step = _load_state(Path(resume_from), trainable, optimizer, lr_scheduler, average)
        _truncate_metrics(work_dir / METRICS_FILE, start_step)
    run = TrainingRun(config, models, handler, token_map, trainable, runtime, work_dir, average)
    summary = _summary(config, plan, dataset, trainable, device, runtime, accelerator, family)
    if is_main and not timing_steps:
        print(_format_summary(summary))

    objective_class = OBJECTIVES[family.objective]
    objective = objective_class(config, dataset, captions, models, denoiser, text_encoders, device)
    prior = None
    if class_set is not None:
        prior = objective_class(
            config,
            class_set,
            class_set.captions,
            models,
            denoiser,
            text_encoders,
            device,
            objective.text_cache,
        )

    # 7b. Nothing on the text side trains and captions are not shuffled: every caption a step
    #     can see is encoded now, and the frozen encoders leave the GPU until samples need them
    #     (FLUX.1's T5-XXL alone is 9.5 GB in bf16).
    if not (config.trains_tokens or config.train_text_encoder or config.shuffle_tokens):
        texts = [*captions, *(class_set.captions if class_set else ())]
        objective.encode_ahead(texts + ([""] if config.caption_dropout else []))
        models.move_text_encoders("cpu")

    # 8. The loop.
    metrics_file = (work_dir / METRICS_FILE) if is_main and not timing_steps else None
    if metrics_file:
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
    last_step = (
        plan.max_train_steps
        if not timing_steps
        else min(plan.max_train_steps, start_step + timing_steps)
    )
    bar = tqdm(
        range(start_step, last_step),
        desc="training",
        disable=not (is_main and config.verbose),
        initial=start_step,
        total=last_step,
        unit="step",
    )
    loss_value, step_seconds = None, []
    for step in bar:
        step_started = time.perf_counter()
        text_trains = config.train_text_encoder or step < plan.pivot_step
        step_loss = 0.0
        for micro in range(plan.accumulation):
            micro_index = step * plan.accumulation + micro
            # Each process takes its slice of the global batch; the draws are the same in
            # every process (seeded by the step alone), so N processes train as one.
            batch = batches.micro_batch(micro_index, plan.micro_batches_per_epoch)
            rank = accelerator.process_index
            part = slice(rank * config.train_batch_size, (rank + 1) * config.train_batch_size)
            generator = torch.Generator().manual_seed(seeded(config.seed, micro_index, 0))
            rng = random.Random(seeded(config.seed, micro_index, 0, 1))
            with accelerator.accumulate(*prepared[:-1]):
                with accelerator.autocast():  # bf16 compute on GPU; fp32 master weights
                    loss = objective.loss(batch, part, generator, rng, text_trains)
                    if prior is not None:  # as many class images, with their own draws
                        loss = loss + config.prior_loss_weight * prior.loss_of_draw(
                            len(batch), part, seeded(config.seed, micro_index, 0, 2), text_trains
                        )
                # 8d. A NaN/inf loss stops the run (on every process) before it writes garbage.
                mean_loss = accelerator.reduce(loss.detach(), "mean").item()
                if not math.isfinite(mean_loss):
                    raise TrainingDivergedError(
                        f"The loss became {mean_loss} at step {step + 1}: training diverged and "
                        "no weights were written. Lower the learning rates (lora_lr, ti_lr, "
                        "unet_learning_rate) or set max_grad_norm."
                    )
                step_loss += mean_loss / plan.accumulation
                accelerator.backward(loss)
        # 8e. One optimizer step: clip, step, schedule, and restore the untouched token rows.
        grad_norm = None
        if config.max_grad_norm:
            grad_norm = float(
                accelerator.clip_grad_norm_(
                    [p for g in param_groups for p in g["params"]], config.max_grad_norm
                )
            )
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if handler is not None and step < plan.pivot_step:
            handler.retract_embeddings()
        if average is not None:
            average.update(step)
        loss_value = step_loss
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{max(lrs.values()):.2e}")
        done = step + 1
        step_seconds.append(time.perf_counter() - step_started)
        if metrics_file:
            row = {
                "step": done,
                "loss": step_loss,
                "lr": lrs,
                "grad_norm": grad_norm,
                "seconds": round(step_seconds[-1], 4),
            }
            with metrics_file.open("a") as file:
                file.write(json.dumps(row) + "\n")
        tracking.log_step(done, step_loss, lrs, grad_norm)
        clock.done("training")
        # 8f. Checkpoints and samples along the way.
        if timing_steps:
            continue
        if _due(config.checkpointing_steps, done, plan.max_train_steps):
            accelerator.wait_for_everyone()
            if is_main:
                _save_checkpoint(run, done, optimizer, lr_scheduler)
            accelerator.wait_for_everyone()
            clock.done("saving")
        if (
            is_main
            and config.sample_prompts
            and _due(config.sample_every, done, plan.max_train_steps)
        ):
            with run.saved_weights():
                files = render_samples(
                    models, config, token_map, work_dir / SAMPLES_DIR, done, accelerator
                )
            tracking.log_samples(done, files)
            clock.done("sampling")
        if tracking.saves_at(done) and done < plan.max_train_steps:
            _save_tracked_weights(run, tracking, done)
            clock.done("saving")
    bar.close()
    if runtime.uses("compile") and is_main and len(step_seconds) > 1:
        median = sorted(step_seconds[1:])[len(step_seconds[1:]) // 2]
        print(
            f"torch.compile: the first step took {step_seconds[0]:.1f}s, later ones "
            f"{median:.2f}s (compiling about {step_seconds[0] - median:.0f}s)."
        )

    result = TrainingResult(
        config,
        family,
        work_dir,
        plan,
        token_map,
        summary,
        clock.seconds,
        step_seconds,
        loss_value,
        is_main,
    )
    if timing_steps:
        return result

    # 9. The final weights (main process), and the last samples.
    accelerator.wait_for_everyone()
    if is_main:
        _save_weights(run, work_dir / WEIGHTS_DIR)
        tracking.save_weights(plan.max_train_steps, work_dir / WEIGHTS_DIR)
        clock.done("saving")
        if config.sample_prompts:
            with run.saved_weights():
                files = render_samples(
                    models,
                    config,
                    token_map,
                    work_dir / SAMPLES_DIR,
                    plan.max_train_steps,
                    accelerator,
                )
            tracking.log_samples(plan.max_train_steps, files)
            clock.done("sampling")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


# --- helpers ----------------------------------------------------------------------------------


def _due(every: int, done: int, total: int) -> bool:
    """Whether an every-N-steps action falls after step `done` (the end has its own)."""
    return bool(every) and done % every == 0 and done < total


def _is_embedding(parameter, models: TrainingComponents) -> bool:
    return any(parameter is e.get_input_embeddings().weight for e in models.text_encoders)


def _save_weights(run: TrainingRun, folder: Path) -> None:
    """Weights only (what the bundle ships), written beside and renamed into place."""
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    dtype = torch.float32 if run.runtime.device.type == "cpu" else torch.float16
    with run.saved_weights():
        save_trained_weights(staging, run.config, run.models, run.handler, run.token_map, dtype)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def _save_tracked_weights(run: TrainingRun, tracking: RunTracking, step: int) -> None:
    """The weights at `step` to the W&B run (written here, uploaded, then deleted)."""
    folder = run.work_dir / TRACKED_WEIGHTS_DIR
    _save_weights(run, folder)
    tracking.save_weights(step, folder)
    shutil.rmtree(folder)


def _save_checkpoint(run: TrainingRun, step: int, optimizer, lr_scheduler) -> None:
    """The weights at `step`, with the state a resumed run needs to continue exactly."""
    checkpoints = run.work_dir / CHECKPOINTS_DIR
    folder = checkpoints / checkpoint_name(step)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    _save_weights(run, staging)
    state = staging / STATE_DIR
    state.mkdir()
    save_file(
        {k: v.detach().float().cpu().contiguous() for k, v in run.trainable.items()},
        str(state / "parameters.safetensors"),
    )
    if run.average is not None:
        save_file(run.average.state(), str(state / AVERAGE_FILE))
    save_state(
        {
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "step": step,
        },
        state,
        "progress",
    )
    staging.rename(folder)
    # Resuming needs only the newest state (a full fine-tune's is 3x the UNet): drop older ones.
    for older in checkpoint_folders(checkpoints):
        if older != folder:
            shutil.rmtree(older / STATE_DIR, ignore_errors=True)


def latest_checkpoint(work_dir: Path) -> Path | None:
    """The last complete checkpoint under `work_dir` (for resuming a killed run)."""
    found = checkpoint_folders(Path(work_dir) / CHECKPOINTS_DIR)
    return found[-1] if found else None


def _load_state(checkpoint: Path, trainable, optimizer, lr_scheduler, average) -> int:
    state = checkpoint / STATE_DIR
    if not state.is_dir():
        raise FileNotFoundError(f"{checkpoint} has no {STATE_DIR}/: it cannot be resumed from.")
    saved = load_file(str(state / "parameters.safetensors"))
    if set(saved) != set(trainable):
        raise ValueError(f"{checkpoint} was written by a run that trained other parameters.")
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(saved[name])
    if average is not None:
        if not (state / AVERAGE_FILE).is_file():
            raise ValueError(f"{checkpoint} was written without ema_decay: resume with it off.")
        average.load_state(load_file(str(state / AVERAGE_FILE)))
    progress = load_state(state, "progress")
    optimizer.load_state_dict(progress["optimizer"])
    lr_scheduler.load_state_dict(progress["lr_scheduler"])
    return int(progress["step"])


def _truncate_metrics(file: Path, step: int) -> None:
    if file.is_file():
        rows = [line for line in file.read_text().splitlines() if json.loads(line)["step"] <= step]
        file.write_text("".join(row + "\n" for row in rows))


def _summary(config, plan, dataset, trainable, device, runtime, accelerator, family) -> dict:
    return {
        "family": family.name,
        "mode": config.mode,
        "resolution": config.resolution,
        "images": dataset.image_count,
        **({"class_images": config.num_class_images} if config.num_class_images else {}),
        # Image sizes (width x height) and how many images have each: one without buckets.
        "sizes": {f"{w}x{h}": len(group) for (h, w), group in sorted(dataset.buckets().items())},
        "steps": plan.max_train_steps,
        "epochs": plan.epochs,
        "batch_size": config.train_batch_size,
        "effective_batch_size": plan.effective_batch_size,
        "processes": accelerator.num_processes,
        "pivot_step": plan.pivot_step,
        "trainable_parameters": sum(p.numel() for p in trainable.values()),
        "device": str(device),
        "dtype": str(runtime.dtype).removeprefix("torch."),
    }


def _format_summary(summary: dict) -> str:
    return "Training: " + ", ".join(
        f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int) else f"{k.replace('_', ' ')} {v}"
        for k, v in summary.items()
    )
