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
from PIL import Image
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
from formats.progress import logs_step, sample_line, step_line
from formats.tokens import TokenEmbeddingsHandler, apply_token_map
from training.components import TrainingComponents, load_components, trainable_parameters
from training.config import NUM_TOKENS, TrainingConfig
from training.dataset import CachedLatentsDataset
from training.ema import WeightAverage
from training.export import save_trained_weights
from training.objectives import OBJECTIVES, TrainingObjective
from training.parameter_groups import add_adapters, is_token_table, parameter_groups
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
        clock = PhaseClock()
        # 1. Processes, device and precision. Trainable parameters are always fp32; on GPU the
        #    compute runs under bf16 autocast.
        accelerator = _accelerator(config, runtime)
        device, is_main = accelerator.device, accelerator.is_main_process
        torch.manual_seed(config.seed)
        if not timing_steps:
            tracking.open(is_main)  # before the models load: a refused key fails fast

        # 2. Models, once the config is known to suit their family.
        family = family or detect_family(base_model)
        config.check_family(family)
        models = _load_models(config, base_model, family, runtime, device)
        clock.done("model load")

        # 3. Latents, once per image (and per flip); prior preservation's class images, drawn
        #    by the base model before anything trains.
        images = TrainingImages.cache(config, dataset_folder, models, work_dir, accelerator, clock)
        if not (config.sample_prompts and is_main):
            models.vae = None  # not needed any more

        # 4. New tokens <s0><s1> in every tokenizer and text encoder (pivotal tuning); the
        #    captions get the trigger's token string.
        handler, token_map = _add_tokens(config, models)
        captions = [apply_token_map(c, token_map) for c in images.subject.captions]

        # 5. Adapters, and every trained parameter in a named optimizer group.
        trained_models = add_adapters(models, config)
        _save_memory_and_time(models, config, runtime)
        named_models = {family.denoiser: models.denoiser, **models.named_text_encoders()}
        trainable = trainable_parameters(named_models)
        param_groups = parameter_groups(trained_models, models, config, handler)

        # 6. Plan, optimizer, scheduler; the trained models as accelerate prepares them; the
        #    average of the trained weights, with `ema_decay`.
        buckets = list(images.subject.buckets().values())
        plan = TrainingPlan.build(config, [len(b) for b in buckets], accelerator.num_processes)
        batches = BatchSchedule(buckets, config.num_repeats, plan.global_batch_size, config.seed)
        optimization = Optimization.prepare(config, plan, param_groups, models, accelerator)
        average = _weight_average(config, trainable, models)
        run = TrainingRun(config, models, handler, token_map, trainable, runtime, work_dir, average)

        # 7. Resume: parameters, optimizer and scheduler state (and the average); every random
        #    draw is a function of (seed, step), so nothing else is needed to continue exactly.
        start_step = _resume(resume_from, run, optimization)
        summary = _summary(run, plan, images.subject, accelerator, family)
        if is_main and not timing_steps:
            print(_format_summary(summary))
            advice = config.method_advice(family)
            if advice:
                print(f"Note: {advice}")

        # 8. The loss, by the family's objective; prior preservation's, of the class images,
        #    shares its text cache.
        objective, prior = _objectives(config, images, captions, models, optimization, device)

        # 9. The loop: one optimizer step, its metrics row, then what falls due after it.
        train_step = OptimizerStep(run, plan, accelerator, batches, objective, prior, optimization)
        metrics = MetricsLog(
            work_dir / METRICS_FILE if is_main and not timing_steps else None, plan.max_train_steps
        )
        outputs = RunOutputs(run, optimization, plan, accelerator, tracking, clock)
        bar = _progress_bar(plan, start_step, timing_steps, shown=is_main and config.verbose)
        records = []
        for step in bar:
            record = train_step(step)
            bar.set_postfix(loss=f"{record.loss:.4f}", lr=f"{max(record.lrs.values()):.2e}")
            records.append(record)
            metrics.write(record, tracking)
            clock.done("training")
            if not timing_steps:
                outputs.after_step(record.steps_done)
        bar.close()
        step_seconds = [record.seconds for record in records]
        if runtime.uses("compile") and is_main:
            _report_compile_time(step_seconds)

        result = TrainingResult(
            config,
            family,
            work_dir,
            plan,
            token_map,
            summary,
            clock.seconds,
            step_seconds,
            records[-1].loss if records else None,
            is_main,
        )
        if not timing_steps:
            outputs.finish()  # 10. The final weights (main process), and the last samples.
        return result


# --- the steps of a run -----------------------------------------------------------------------


def _accelerator(config: TrainingConfig, runtime: Runtime) -> Accelerator:
    return Accelerator(
        mixed_precision=MIXED_PRECISION[runtime.dtype],
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=runtime.device.type == "cpu",
        kwargs_handlers=[
            # The first encoder's last layer is unused (SDXL reads the penultimate one).
            DistributedDataParallelKwargs(find_unused_parameters=config.train_text_encoder)
        ],
    )


def _load_models(
    config: TrainingConfig,
    base_model: Path,
    family: ModelFamily,
    runtime: Runtime,
    device: torch.device,
) -> TrainingComponents:
    """The base model's components; a channels-last UNet where the runtime prefers it."""
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
    return models


def _objectives(
    config: TrainingConfig,
    images: TrainingImages,
    captions: list[str],
    models: TrainingComponents,
    optimization: Optimization,
    device,
):
    """The training loss by the family's objective, and prior preservation's (None without
    class images), which shares its text cache; captions encoded ahead where they can be."""
    objective_class = OBJECTIVES[models.family.objective]
    trained = (models, optimization.denoiser, optimization.text_encoders, device)
    objective = objective_class(config, images.subject, captions, *trained)
    prior = None
    if images.classes is not None:
        classes = images.classes
        prior = objective_class(config, classes, classes.captions, *trained, objective.text_cache)
    _encode_ahead(config, objective, images, captions, models)
    return objective, prior


@dataclass(frozen=True)
class TrainingImages:
    """The latents a run trains on: the subject's images, and prior preservation's class
    images (None without)."""

    subject: CachedLatentsDataset
    classes: CachedLatentsDataset | None

    @classmethod
    def cache(
        cls,
        config: TrainingConfig,
        dataset_folder: Path,
        models: TrainingComponents,
        work_dir: Path,
        accelerator: Accelerator,
        clock: PhaseClock,
    ) -> TrainingImages:
        scales = tuple(size / config.resolution for size in config.bucket_resolutions)
        on_disk = work_dir / LATENTS_DIR / f"process-{accelerator.process_index}"
        subject = CachedLatentsDataset(
            read_captions(dataset_folder),
            models.vae,
            models.family,
            config.flip_augmentation,
            config.use_masks,
            scales,
            cache_dir=on_disk / "images" if config.cache_latents_to_disk else None,
        )
        clock.done("latent caching")
        if not config.num_class_images:
            return cls(subject, None)
        class_items = render_class_images(models, config, work_dir / CLASS_IMAGES_DIR, accelerator)
        classes = CachedLatentsDataset(
            class_items,
            models.vae,
            models.family,
            config.flip_augmentation,
            False,
            cache_dir=on_disk / "class_images" if config.cache_latents_to_disk else None,
        )
        clock.done("class images")
        return cls(subject, classes)


def _add_tokens(
    config: TrainingConfig, models: TrainingComponents
) -> tuple[TokenEmbeddingsHandler | None, dict[str, str]]:
    """The new tokens in every tokenizer and text encoder, their tables trainable in fp32; the
    handler and the trigger's token map (none and empty when no tokens train)."""
    if not config.trains_tokens:
        return None, {}
    handler = TokenEmbeddingsHandler(
        models.text_encoders, models.tokenizers, models.family.pti_keys
    )
    handler.initialize_new_tokens(
        NUM_TOKENS, torch.Generator().manual_seed(config.seed), config.token_init_word
    )
    handler.train_tables()
    return handler, {config.token_string: "".join(handler.tokens)}


def _save_memory_and_time(
    models: TrainingComponents, config: TrainingConfig, runtime: Runtime
) -> None:
    """Gradient checkpointing (less memory) and regional compilation (faster steps), as asked."""
    if config.gradient_checkpointing:
        models.denoiser.enable_gradient_checkpointing()
    if runtime.uses("compile"):  # regional: each repeated block compiles once, then is reused
        models.denoiser.compile_repeated_blocks()


@dataclass(frozen=True)
class Optimization:
    """The run's one optimizer and learning-rate scheduler, and the trained models as accelerate
    prepared them (wrapped for data parallelism)."""

    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    param_groups: list[dict]
    prepared_models: tuple[torch.nn.Module, ...]  # those with a trained parameter
    denoiser: torch.nn.Module  # prepared if it trains, else the model itself
    text_encoders: list  # likewise

    @classmethod
    def prepare(
        cls,
        config: TrainingConfig,
        plan: TrainingPlan,
        param_groups: list[dict],
        models: TrainingComponents,
        accelerator: Accelerator,
    ) -> Optimization:
        optimizer = build_optimizer(
            config.optimizer, param_groups, config.weight_decay, accelerator.device
        )
        lr_scheduler = build_lr_scheduler(optimizer, config, plan)
        trained = [
            m
            for m in (models.denoiser, *models.text_encoders)
            if any(p.requires_grad for p in m.parameters())
        ]
        *prepared, optimizer = accelerator.prepare(*trained, optimizer)
        wrapped = dict(zip(map(id, trained), prepared, strict=True))
        return cls(
            optimizer,
            lr_scheduler,
            param_groups,
            tuple(prepared),
            wrapped.get(id(models.denoiser), models.denoiser),
            [wrapped.get(id(e), e) for e in models.text_encoders],
        )


def _weight_average(
    config: TrainingConfig, trainable: dict[str, torch.Tensor], models: TrainingComponents
) -> WeightAverage | None:
    """With `ema_decay`: the average of what the optimizer trains, but the (retracted) token
    tables."""
    if not config.ema_decay:
        return None
    averaged = {n: p for n, p in trainable.items() if not is_token_table(p, models)}
    return WeightAverage(averaged, config.ema_decay)


def _resume(checkpoint: Path | None, run: TrainingRun, optimization: Optimization) -> int:
    """The state of `checkpoint` loaded, the metrics cut back to its step: the step the run
    continues from (0 without a checkpoint)."""
    if checkpoint is None:
        return 0
    step = _load_state(
        Path(checkpoint),
        run.trainable,
        optimization.optimizer,
        optimization.lr_scheduler,
        run.average,
    )
    _truncate_metrics(run.work_dir / METRICS_FILE, step)
    return step


def _encode_ahead(
    config: TrainingConfig,
    objective: TrainingObjective,
    images: TrainingImages,
    captions: list[str],
    models: TrainingComponents,
) -> None:
    """When nothing on the text side trains and captions are not shuffled: every caption a step
    can see encoded now, and the frozen encoders off the GPU until samples need them (FLUX.1's
    T5-XXL alone is 9.5 GB in bf16)."""
    if not (config.trains_tokens or config.train_text_encoder or config.shuffle_tokens):
        texts = [*captions, *(images.classes.captions if images.classes else ())]
        objective.encode_ahead(texts + ([""] if config.caption_dropout else []))
        models.move_text_encoders("cpu")


@dataclass(frozen=True)
class StepRecord:
    """What one optimizer step reports."""

    steps_done: int  # this step included
    loss: float  # the mean over its micro-batches and the processes
    lrs: dict[str, float]  # each parameter group's learning rate, after the schedule's step
    grad_norm: float | None  # before clipping; None without max_grad_norm
    seconds: float


@dataclass(frozen=True)
class OptimizerStep:
    """One optimizer step: the gradients of its micro-batches, accumulated, then clipping, the
    optimizer's and the scheduler's step, and the trained tokens' untouched rows put back."""

    run: TrainingRun
    plan: TrainingPlan
    accelerator: Accelerator
    batches: BatchSchedule
    objective: TrainingObjective
    prior: TrainingObjective | None  # prior preservation's loss, on the class images
    optimization: Optimization

    def __call__(self, step: int) -> StepRecord:
        started = time.perf_counter()
        text_trains = self.run.config.train_text_encoder or step < self.plan.pivot_step
        step_loss = 0.0
        for micro in range(self.plan.accumulation):
            step_loss += self._backward(step, micro, text_trains) / self.plan.accumulation
        grad_norm = self._apply_gradients(step)
        lrs = {g["name"]: g["lr"] for g in self.optimization.optimizer.param_groups}
        return StepRecord(step + 1, step_loss, lrs, grad_norm, time.perf_counter() - started)

    def _backward(self, step: int, micro: int, text_trains: bool) -> float:
        """The gradients of one micro-batch (accumulated); its loss, averaged over processes."""
        config, accelerator = self.run.config, self.accelerator
        micro_index = step * self.plan.accumulation + micro
        # Each process takes its slice of the global batch; the draws are the same in every
        # process (seeded by the step alone), so N processes train as one.
        batch = self.batches.micro_batch(micro_index, self.plan.micro_batches_per_epoch)
        rank = accelerator.process_index
        part = slice(rank * config.train_batch_size, (rank + 1) * config.train_batch_size)
        generator = torch.Generator().manual_seed(seeded(config.seed, micro_index, 0))
        rng = random.Random(seeded(config.seed, micro_index, 0, 1))
        with accelerator.accumulate(*self.optimization.prepared_models):
            with accelerator.autocast():  # bf16 compute on GPU; fp32 master weights
                loss = self.objective.loss(batch, part, generator, rng, text_trains)
                if self.prior is not None:  # as many class images, with their own draws
                    loss = loss + config.prior_loss_weight * self.prior.loss_of_draw(
                        len(batch), part, seeded(config.seed, micro_index, 0, 2), text_trains
                    )
            # A NaN/inf loss stops the run (on every process) before it writes garbage.
            mean_loss = accelerator.reduce(loss.detach(), "mean").item()
            if not math.isfinite(mean_loss):
                raise TrainingDivergedError(
                    f"The loss became {mean_loss} at step {step + 1}: training diverged and "
                    "no weights were written. Lower the learning rates (lora_lr, ti_lr, "
                    "unet_learning_rate) or set max_grad_norm."
                )
            accelerator.backward(loss)
        return mean_loss

    def _apply_gradients(self, step: int) -> float | None:
        """Clip, step, schedule, restore the untouched token rows, update the average; the
        gradient norm before clipping (None without max_grad_norm)."""
        run, optimization = self.run, self.optimization
        grad_norm = None
        if run.config.max_grad_norm:
            parameters = [p for g in optimization.param_groups for p in g["params"]]
            grad_norm = float(
                self.accelerator.clip_grad_norm_(parameters, run.config.max_grad_norm)
            )
        optimization.optimizer.step()
        optimization.lr_scheduler.step()
        optimization.optimizer.zero_grad(set_to_none=True)
        if run.handler is not None and step < self.plan.pivot_step:
            run.handler.retract_embeddings()
        if run.average is not None:
            run.average.update(step)
        return grad_norm


class MetricsLog:
    """Each step's row: to metrics.jsonl (`file`; None: not written), to the W&B run, and as a
    progress line of the log (formats/progress.py) when the file is written."""

    def __init__(self, file: Path | None, total: int):
        self.file, self.total = file, total
        if file:
            file.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: StepRecord, tracking: RunTracking) -> None:
        if self.file:
            row = {
                "step": record.steps_done,
                "loss": record.loss,
                "lr": record.lrs,
                "grad_norm": record.grad_norm,
                "seconds": round(record.seconds, 4),
            }
            with self.file.open("a") as file:
                file.write(json.dumps(row) + "\n")
            if logs_step(record.steps_done, self.total):
                print(step_line(record.steps_done, self.total, record.loss, record.seconds))
        tracking.log_step(record.steps_done, record.loss, record.lrs, record.grad_norm)


@dataclass(frozen=True)
class RunOutputs:
    """What a run writes on the way (checkpoints, samples, the weights for the W&B run) and at
    the end (the weights, the last samples); the weights and samples by the main process."""

    run: TrainingRun
    optimization: Optimization
    plan: TrainingPlan
    accelerator: Accelerator
    tracking: RunTracking
    clock: PhaseClock

    def after_step(self, done: int) -> None:
        """What falls due after step `done`."""
        config, accelerator = self.run.config, self.accelerator
        total, is_main = self.plan.max_train_steps, accelerator.is_main_process
        if _due(config.checkpointing_steps, done, total):
            accelerator.wait_for_everyone()
            if is_main:
                optimization = self.optimization
                _save_checkpoint(self.run, done, optimization.optimizer, optimization.lr_scheduler)
            accelerator.wait_for_everyone()
            self.clock.done("saving")
        if is_main and config.sample_prompts and _due(config.sample_every, done, total):
            self._render_samples(done)
        if self.tracking.saves_at(done) and done < total:
            _save_tracked_weights(self.run, self.tracking, done)
            self.clock.done("saving")

    def finish(self) -> None:
        run, accelerator, total = self.run, self.accelerator, self.plan.max_train_steps
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _save_weights(run, run.work_dir / WEIGHTS_DIR)
            self.tracking.save_weights(total, run.work_dir / WEIGHTS_DIR)
            self.clock.done("saving")
            if run.config.sample_prompts:
                self._render_samples(total)
        accelerator.wait_for_everyone()
        accelerator.end_training()

    def _render_samples(self, step: int) -> None:
        run = self.run
        with run.saved_weights():
            files = render_samples(
                run.models,
                run.config,
                run.token_map,
                run.work_dir / SAMPLES_DIR,
                step,
                self.accelerator,
            )
        for index, (prompt, file) in enumerate(zip(run.config.sample_prompts, files, strict=True)):
            with Image.open(file) as image:
                print(sample_line(step, index, prompt, image))
        self.tracking.log_samples(step, files)
        self.clock.done("sampling")


def _progress_bar(plan: TrainingPlan, start_step: int, timing_steps: int, shown: bool) -> tqdm:
    """The steps from `start_step` on: to the end, or `timing_steps` of them (a dry run)."""
    last_step = plan.max_train_steps
    if timing_steps:
        last_step = min(plan.max_train_steps, start_step + timing_steps)
    return tqdm(
        range(start_step, last_step),
        desc="training",
        disable=not shown,
        initial=start_step,
        total=last_step,
        unit="step",
    )


def _report_compile_time(step_seconds: list[float]) -> None:
    """How long torch.compile took: the first step's time beyond the later ones' median."""
    if len(step_seconds) > 1:
        median = sorted(step_seconds[1:])[len(step_seconds[1:]) // 2]
        print(
            f"torch.compile: the first step took {step_seconds[0]:.1f}s, later ones "
            f"{median:.2f}s (compiling about {step_seconds[0] - median:.0f}s)."
        )


# --- helpers ----------------------------------------------------------------------------------


def _due(every: int, done: int, total: int) -> bool:
    """Whether an every-N-steps action falls after step `done` (the end has its own)."""
    return bool(every) and done % every == 0 and done < total


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


def _summary(
    run: TrainingRun,
    plan: TrainingPlan,
    dataset: CachedLatentsDataset,
    accelerator: Accelerator,
    family: ModelFamily,
) -> dict:
    config = run.config
    return {
        "family": family.name,
        "mode": config.mode,
        "learning": config.learning,
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
        "trainable_parameters": sum(p.numel() for p in run.trainable.values()),
        "device": str(accelerator.device),
        "dtype": str(run.runtime.dtype).removeprefix("torch."),
    }


def _format_summary(summary: dict) -> str:
    return "Training: " + ", ".join(
        f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int) else f"{k.replace('_', ' ')} {v}"
        for k, v in summary.items()
    )
