"""Where a run reports besides its own files: a Weights & Biases run, as Replicate's Flux
trainer keeps one (the loss of every step, the samples as images, the settings, and the LoRA
weights every `wandb_save_interval` steps and at the end), when the config names a project.

wandb is imported only then. The API key is handed to wandb's settings (or, in the processes
of a data-parallel run, read by wandb from `WANDB_API_KEY`); it is never logged or recorded.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from formats.bundle import LORA_FILE
from training.config import TrainingConfig
from weights.settings import wandb_dir

WEIGHTS_FOLDER = "weights"  # in the W&B run's files: weights/step-000100/lora.safetensors


class RunTracking:
    """A context around a run: `open` starts the W&B run (main process), the `log_*` and
    `save_weights` calls do nothing without one, and leaving finishes it, as failed when an
    exception leaves."""

    def __init__(self, config: TrainingConfig, api_key: str | None, run_dir: Path):
        self.config, self.api_key, self.run_dir = config, api_key, run_dir
        self.run = None

    def __enter__(self) -> RunTracking:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if kind is None else 1)
            self.run = None

    def open(self, is_main: bool) -> None:
        config = self.config
        if not (config.wandb_project and is_main):
            return
        import wandb

        folder = wandb_dir() or self.run_dir  # the run folder goes with the job
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=config.wandb_project,
            entity=config.wandb_entity,
            name=config.wandb_run,
            config=config.to_json(),
            dir=folder,
            settings=wandb.Settings(
                api_key=self.api_key,  # None: WANDB_API_KEY
                console="off",  # Cog captures the log; wandb must not rewrap its streams
                save_code=False,
                x_disable_machine_info=True,
            ),
        )
        print(f"Weights & Biases: logging to project {config.wandb_project}.")

    def log_step(self, step: int, loss: float, lrs: dict[str, float], grad_norm) -> None:
        if self.run is not None:
            row = {"loss": loss, "lr": max(lrs.values()), **{f"lr/{k}": v for k, v in lrs.items()}}
            self.run.log({**row, **({"grad_norm": grad_norm} if grad_norm else {})}, step=step)

    def log_samples(self, step: int, files: list[Path]) -> None:
        """The sample images of `step`, one per sample prompt, under `samples/<prompt>`."""
        if self.run is not None and files:
            import wandb

            prompts = self.config.sample_prompts
            images = {
                f"samples/{p}": wandb.Image(str(f)) for p, f in zip(prompts, files, strict=True)
            }
            self.run.log(images, step=step)

    def saves_at(self, step: int) -> bool:
        every = self.config.wandb_save_interval
        return self.run is not None and bool(every) and step % every == 0

    def save_weights(self, step: int, weights: Path) -> None:
        """Upload `weights`' LoRA file as the run's `weights/step-<step>/lora.safetensors`."""
        if self.run is None or not (weights / LORA_FILE).is_file():
            return
        target = Path(self.run.dir) / WEIGHTS_FOLDER / f"step-{step:06d}" / LORA_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(weights / LORA_FILE, target)
        self.run.save(str(target), base_path=self.run.dir, policy="now")
