"""Train from the command line on an already prepared dataset folder (captions.csv + crops +
masks), on one device or data-parallel:

    python -m training DATASET WORK_DIR --set max_train_steps=500 --set lora_rank=16
    accelerate launch --num_processes 2 -m training DATASET WORK_DIR
    python -m training DATASET WORK_DIR --resume   # continue from WORK_DIR's last checkpoint
    python -m training DATASET WORK_DIR --resume-from OLD_RUN   # or from another run's

`--set` takes any `TrainingConfig` field (values parsed as JSON when they parse). The bundle is
written to WORK_DIR/trained_model.tar.
"""

from __future__ import annotations

import weights.quiet  # noqa: F401 (first: keeps libraries' import-time noise out of logs)

# isort: split

import argparse
import json
from pathlib import Path

from formats.bundle import BUNDLE_FILE
from training.config import TrainingConfig, parse_settings
from training.job import PreparedImages, TrainingJob, run_job
from training.loop import latest_checkpoint
from training.resume import ResumePoint
from weights.settings import ModelSettings


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path, help="folder with captions.csv, images and masks")
    parser.add_argument("work_dir", type=Path, help="where checkpoints, samples and the bundle go")
    parser.add_argument("--base-model", help="default: $BASE_MODEL")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument(
        "--resume-from",
        type=Path,
        help="continue from a checkpoint, or an unpacked tarball's newest",
    )
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument(
        "--output", type=Path, help="the tarball (default WORK_DIR/trained_model.tar)"
    )
    parser.add_argument("--preview", type=Path, help="a preview.png to put in the tarball")
    parser.add_argument("--inputs", type=Path, help="a JSON file of inputs to record instead")
    parser.add_argument("--base-model-name", help="how the record names the base model")
    args = parser.parse_args(argv)

    inputs = parse_settings(args.set)
    settings = ModelSettings.from_env()
    resume = None
    if args.resume:
        if latest_checkpoint(args.work_dir) is None:
            parser.error(f"--resume: {args.work_dir} has no checkpoint yet.")
        resume = ResumePoint.find(args.work_dir, str(args.work_dir))
    elif args.resume_from:
        resume = ResumePoint.find(args.resume_from, str(args.resume_from))
    job = TrainingJob(
        TrainingConfig(**{"seed": 0, **inputs}),  # one seed for every process
        base_model=args.base_model or settings.base_model,
        base_model_name=args.base_model_name,
        run_dir=args.work_dir,
        output=args.output or args.work_dir / BUNDLE_FILE,
        resume_from=resume,
        inputs=json.loads(args.inputs.read_text()) if args.inputs else inputs,
        processes=1,  # one process, or one of those `accelerate launch` started
    )
    bundle = run_job(job, settings, lambda: PreparedImages(args.dataset, args.preview))
    if bundle is not None:
        print(f"Wrote {bundle}")


if __name__ == "__main__":
    main()
