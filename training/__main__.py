"""Train from the command line on an already prepared dataset folder (captions.csv + crops +
masks), on one device or data-parallel:

    python -m training DATASET WORK_DIR --set max_train_steps=500 --set lora_rank=16
    accelerate launch --num_processes 2 -m training DATASET WORK_DIR
    python -m training DATASET WORK_DIR --resume   # continue from WORK_DIR's last checkpoint

`--set` takes any `TrainingConfig` field (values parsed as JSON when they parse). The bundle is
written to WORK_DIR/trained_model.tar.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from formats.bundle import BUNDLE_FILE
from training.bundle import write_bundle
from training.config import TrainingConfig
from training.loop import latest_checkpoint, run_training
from weights.base_models import diffusers_folder, resolve_model
from weights.runtime import pick_runtime
from weights.settings import ModelSettings


def parse_settings(pairs: list[str]) -> dict:
    settings = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path, help="folder with captions.csv, images and masks")
    parser.add_argument("work_dir", type=Path, help="where checkpoints, samples and the bundle go")
    parser.add_argument("--base-model", help="default: $BASE_MODEL")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args(argv)

    settings = parse_settings(args.set)
    config = TrainingConfig(**{"seed": 0, **settings})
    model_settings = ModelSettings.from_env()
    base = args.base_model or model_settings.base_model
    runtime = pick_runtime(model_settings.device, model_settings.dtype)
    resume = latest_checkpoint(args.work_dir) if args.resume else None
    if args.resume and resume is None:
        parser.error(f"--resume: {args.work_dir} has no checkpoint yet.")
    model_folder = diffusers_folder(
        resolve_model(base, "base", model_settings.cache_dir),
        model_settings.cache_dir,
        model_settings.single_file_config,
    )
    result = run_training(config, args.dataset, model_folder, args.work_dir, runtime, resume)
    if result.is_main_process:
        bundle = write_bundle(result, args.work_dir / BUNDLE_FILE, base, inputs=settings)
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in result.phase_seconds.items())
        print(f"Time per phase: {phases}\nWrote {bundle}")


if __name__ == "__main__":
    main()
