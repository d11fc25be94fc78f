"""This project's trainer against diffusers' own advanced DreamBooth-LoRA SDXL script
(`train_dreambooth_lora_sdxl_advanced.py`, unedited) on the toy world: both train the emblem
at equal settings, and both results are evaluated as `run.py` evaluates a bundle.

    .venv/bin/python benchmarks/quality/reference.py \\
        --script /tmp/train_dreambooth_lora_sdxl_advanced.py \\
        --packages /tmp/bench-deps /tmp/bench-deps-datasets \\
        --methods LoRA "pivotal tuning" --training-seeds 0 1 2

If a method learns nothing under both trainers, the toy base (its frozen tiny text encoders)
limits it; if only under ours, our trainer does. The script comes from diffusers' repository
(benchmarks/README.md names the commit) and needs torchvision and `datasets` (for the
captions), installed outside the project's environment (`pip install --no-deps --target`)
and named by `--packages`.

Equal settings: the same 8 emblem photos and captions ("a TOK on a …"; `toyworld.subject`),
resolution 64, batch, LoRA rank (alpha = rank) on the UNet's attention projections, AdamW at
constant rates (LoRA and tokens), weight decay 1e-4, gradient clipping at 1, min-SNR (off by
default), two new tokens per trigger trained for the first half of the steps, fp32 on one CPU
thread. The script's captions go through a local image folder (`--dataset_name`, a
`metadata.jsonl`); its latents are not cached (`--cache_latents` pairs the first epoch's
latents with later epochs' captions). Its LoRA and token vectors are packed as a bundle
folder (`formats.bundle` layout) that the predictor's weights switcher loads like ours.

Each training runs in its own process: the table gives its wall time, the median seconds
between optimizer steps (the first left out) and its peak RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.diffusers_script import (  # noqa: E402 (after the path set-up)
    peak_rss_mb,
    run_script,
    step_intervals,
    time_optimizer_steps,
    worker_environment,
)
from benchmarks.quality.run import summarise, summary_table, table  # noqa: E402

HERE = Path(__file__).resolve().parent
METHODS = ("LoRA", "textual inversion", "pivotal tuning")
TRAINERS = ("diffusers", "ours")
TRIGGER = "TOK"
SCRIPT_OUTPUT = (
    "out"  # relative: the script names its embeddings file "{output_dir}/{output_dir}_emb"
)


@dataclass(frozen=True)
class Recipe:
    """One training, expressed once and given to either trainer in its own terms."""

    method: str
    steps: int
    seed: int
    lora_lr: float
    ti_lr: float
    rank: int
    batch: int
    min_snr_gamma: float

    @property
    def trains_lora(self) -> bool:
        return self.method != "textual inversion"

    @property
    def trains_tokens(self) -> bool:
        return self.method != "LoRA"

    def our_inputs(self) -> dict:
        """The Cog train() inputs (everything else at its declared default)."""
        return dict(
            resolution=64,
            seed=self.seed,
            max_train_steps=self.steps,
            checkpointing_steps=0,
            verbose=False,
            train_batch_size=self.batch,
            lora_rank=self.rank,
            lora_lr=self.lora_lr if self.trains_lora else 0,
            ti_lr=self.ti_lr if self.trains_tokens else 0,
            min_snr_gamma=self.min_snr_gamma,
        )

    def script_arguments(self, base: Path, photos: Path) -> list[str]:
        arguments = [
            f"--pretrained_model_name_or_path={base}",
            f"--dataset_name={photos}",
            "--caption_column=prompt",
            f"--instance_prompt=a {TRIGGER}",  # unused: every photo has its caption
            f"--token_abstraction={TRIGGER}",
            f"--output_dir={SCRIPT_OUTPUT}",
            "--cache_dir=cache",
            "--resolution=64",
            f"--train_batch_size={self.batch}",
            f"--max_train_steps={self.steps}",
            f"--rank={self.rank}",
            f"--learning_rate={self.lora_lr if self.trains_lora else 0}",
            "--optimizer=adamw",
            "--adam_weight_decay=1e-4",
            "--lr_scheduler=constant",
            "--lr_warmup_steps=0",
            "--max_grad_norm=1.0",
            f"--seed={self.seed}",
            "--checkpointing_steps=1000000",
            "--mixed_precision=no",
            "--dataloader_num_workers=0",
        ]
        if self.min_snr_gamma:
            arguments.append(f"--snr_gamma={self.min_snr_gamma}")
        if self.trains_tokens:
            arguments += ["--train_text_encoder_ti", f"--text_encoder_lr={self.ti_lr}"]
            # Ours trains tokens alone for the whole run, beside a LoRA for the first half.
            arguments.append(f"--train_text_encoder_ti_frac={0.5 if self.trains_lora else 1.0}")
        return arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--script", type=Path,
                        help="diffusers' train_dreambooth_lora_sdxl_advanced.py")  # fmt: skip
    parser.add_argument("--packages", type=Path, nargs="*", default=[],
                        help="folders holding torchvision and datasets (pip --target)")  # fmt: skip
    parser.add_argument("--trainers", nargs="+", choices=TRAINERS, default=list(TRAINERS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["LoRA"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--training-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lora-lr", type=float, default=1e-4)
    parser.add_argument("--ti-lr", type=float, default=3e-4)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--min-snr-gamma", type=float, default=0.0, help="0: plain MSE")
    parser.add_argument("--evaluation-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--out", type=Path, default=HERE / "reference" / "results.json")
    parser.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, json.loads(args.job.read_text()))
        return
    if args.script is None and "diffusers" in args.trainers:
        parser.error("--script is required to train with diffusers' script")
    compare(args)


# --- the parent: the photos, each training in its worker, the evaluation ---------------------


def compare(args) -> None:
    os.environ.setdefault("SDXL_TUNER_CACHE", str(Path.home() / ".cache" / "sdxl-tuner"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from toyworld.evaluate import EvaluationSettings, ToyEvaluator
    from weights.embedded.toy import ensure_toy_model

    torch.set_num_threads(1)
    cache = Path(os.environ["SDXL_TUNER_CACHE"])
    settings = EvaluationSettings(seeds=tuple(args.evaluation_seeds))
    evaluator = ToyEvaluator("toy", cache, settings)
    base = evaluator.evaluate().fidelity.as_dict()
    columns = list(base)
    rows = [{"method": "base model", "steps": 0, "seconds": 0.0, **base}]
    print(table(rows, columns), flush=True)
    with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
        work = Path(tmp)
        inputs = write_photos(work)
        toy = ensure_toy_model("base", cache)
        for method in args.methods:
            for seed in args.training_seeds:
                recipe = Recipe(method, args.steps, seed, args.lora_lr, args.ti_lr, args.rank,
                                args.batch, args.min_snr_gamma)  # fmt: skip
                for trainer in args.trainers:
                    run = work / f"{trainer}-{method.replace(' ', '-')}-{seed}"
                    run.mkdir()
                    job = dict(recipe=dataclasses.asdict(recipe), base=str(toy),
                               script=str(args.script), **inputs)  # fmt: skip
                    result = train_in_worker(trainer, job, run, args.packages)
                    fidelity = evaluator.evaluate(result["weights"]).fidelity.as_dict()
                    rows.append({"method": label(trainer, recipe, args), "steps": args.steps,
                                 "training_seed": seed, **result, **fidelity})  # fmt: skip
                    print(table(rows[-1:], columns, header=False), flush=True)
                    shutil.rmtree(run)
    report(rows, columns, args)


def write_photos(work: Path) -> dict[str, str]:
    """The emblem's photos as ours takes them (the zip) and as the script does (an image
    folder with a metadata.jsonl of captions, which `datasets` reads)."""
    from toyworld.subject import subject_images, write_subject_zip

    folder = work / "photos"
    folder.mkdir()
    with (folder / "metadata.jsonl").open("w") as metadata:
        for index, (image, caption) in enumerate(subject_images(8, seed=0)):
            image.save(folder / f"emblem_{index:02d}.png")
            metadata.write(json.dumps({"file_name": f"emblem_{index:02d}.png", "prompt": caption}))
            metadata.write("\n")
    return {"zip": str(write_subject_zip(work / "emblem.zip")), "folder": str(folder)}


def train_in_worker(trainer: str, job: dict, run: Path, packages: list[Path]) -> dict:
    (run / "job.json").write_text(json.dumps(job))
    command = [sys.executable, __file__, "--worker", trainer, "--job", str(run / "job.json")]
    env = worker_environment(packages if trainer == "diffusers" else [])  # ours needs none
    started = time.perf_counter()
    with (run / "log.txt").open("w") as log:
        done = subprocess.run(command, cwd=run, env=env, stdout=log,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    seconds = time.perf_counter() - started
    lines = (run / "log.txt").read_text().splitlines()
    results = [line for line in lines if line.startswith('{"weights"')]
    if done.returncode or not results:
        raise SystemExit(f"{trainer} failed ({run}):\n" + "\n".join(lines[-40:]))
    result = json.loads(results[-1])
    intervals = result.pop("intervals")
    return {**result, "seconds": seconds, "step_s": statistics.median(intervals)}


def label(trainer: str, recipe: Recipe, args) -> str:
    rates = []
    if recipe.trains_lora:
        rates.append(f"LoRA {recipe.lora_lr:g}")
    if recipe.trains_tokens:
        rates.append(f"tokens {recipe.ti_lr:g}")
    return f"{recipe.method}, {trainer} ({', '.join(rates)})"


def report(rows: list[dict], columns: list[str], args) -> None:
    print("\nPer training seed:\n" + table(rows, columns))
    summary = summarise(rows[1:], columns)
    print(
        f"\nOver training seeds {args.training_seeds}:\n" + summary_table(rows[0], summary, columns)
    )
    print("\n| trainer | s/step (median) | peak RSS MB | wall s |\n|---|---|---|---|")
    for name in dict.fromkeys(row["method"] for row in rows[1:]):
        runs = [row for row in rows[1:] if row["method"] == name]
        step = statistics.fmean(row["step_s"] for row in runs)
        peak = max(row["peak_rss_mb"] for row in runs)
        wall = statistics.fmean(row["seconds"] for row in runs)
        print(f"| {name} | {step:.3f} | {peak:.0f} | {wall:.0f} |")
    record = dict(vars(args), rows=rows, summary=summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, default=str) + "\n")  # paths as text
    print(f"Wrote {args.out}")


# --- a worker: one training, its optimizer steps timed; prints the weights it made ----------


def run_worker(trainer: str, job: dict) -> None:
    import torch

    torch.set_num_threads(1)
    ends = time_optimizer_steps()
    recipe = Recipe(**job["recipe"])
    if trainer == "ours":
        weights = train_ours(recipe, Path(job["zip"]))
    else:
        run_script(
            Path(job["script"]), recipe.script_arguments(Path(job["base"]), Path(job["folder"]))
        )
        weights = script_bundle(Path(SCRIPT_OUTPUT).resolve(), Path("bundle").resolve(), recipe)
    print(json.dumps({"weights": str(weights), "intervals": step_intervals(ends),
                      "peak_rss_mb": peak_rss_mb()}))  # fmt: skip


def train_ours(recipe: Recipe, photos: Path) -> Path:
    os.environ.setdefault("SDXL_TUNER_CACHE", str(Path.home() / ".cache" / "sdxl-tuner"))
    from toyworld.evaluate import train_on_zip

    return train_on_zip(photos, "toy", Path.cwd(), **recipe.our_inputs()).path


def script_bundle(output: Path, bundle: Path, recipe: Recipe) -> Path:
    """The script's LoRA and token vectors as a bundle folder in this project's layout: the
    LoRA file as it is (diffusers/PEFT keys, alpha = rank), the vectors under Replicate's
    keys, and the trigger's tokens (the script names them <s0><s1>, as ours does)."""
    from safetensors.torch import load_file, save_file

    from families import FAMILIES
    from formats.bundle import EMBEDDINGS_PTI_FILE, LORA_FILE, SPECIAL_PARAMS_FILE, Manifest

    sdxl = FAMILIES["sdxl"]
    bundle.mkdir()
    token_map = {}
    if recipe.trains_lora:
        shutil.copy(output / "pytorch_lora_weights.safetensors", bundle / LORA_FILE)
    if recipe.trains_tokens:
        vectors = load_file(str(output / f"{output.name}_emb.safetensors"))
        keys = zip(sdxl.pti_keys, sdxl.embedding_keys, strict=True)
        save_file({pti: vectors[name] for pti, name in keys}, str(bundle / EMBEDDINGS_PTI_FILE))
        token_map = {TRIGGER: "<s0><s1>"}
    (bundle / SPECIAL_PARAMS_FILE).write_text(json.dumps(token_map))
    Manifest.of_folder(bundle, sdxl.name, TRIGGER, token_map).write(bundle)
    return bundle


if __name__ == "__main__":
    main()
