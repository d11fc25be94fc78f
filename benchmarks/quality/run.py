"""Fine-tuning quality in the toy world: LoRA, textual inversion, pivotal tuning and full
fine-tuning of the emblem at a few step counts, against the base model (step 0).

    .venv/bin/python benchmarks/quality/run.py                  # base model `toy`
    .venv/bin/python benchmarks/quality/run.py --quick          # fewer steps and seeds
    .venv/bin/python benchmarks/quality/run.py --set lora_lr=1e-3 --steps 100 200
    .venv/bin/python benchmarks/quality/run.py --steps 400 --lora-scale 1.0 --out /tmp/q

Every run is the Cog `train()` on the emblem zip (`toyworld.subject`) with the declared
defaults except resolution 64, the step count, seed 0, no checkpoints, and what `--set` gives;
each method changes only the inputs listed in METHODS. The metrics are `toyworld.evaluate`'s
(see its docstring). Prints a markdown table; writes the plot and the figures as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from training.config import parse_settings  # noqa: E402 (after the path set-up)

HERE = Path(__file__).resolve().parent
# The train() inputs each method changes from the declared defaults.
METHODS = {
    "LoRA": {"ti_lr": 0},
    "textual inversion": {"lora_lr": 0},
    "pivotal tuning": {},  # LoRA + textual inversion: the default
    "full fine-tune": {"is_lora": False},  # + textual inversion, as by default
}
STEPS = (100, 200, 400)
QUICK_STEPS = (400,)  # where the defaults first draw the subject
QUICK_SEEDS = (0, 1)
COLUMNS = ("subject", "emblem", "prompt", "pattern", "preserved", "drift", "leak", "scene")
PLOTTED = (
    ("subject", "subject fidelity"),
    ("prompt", "prompt fidelity"),
    ("preserved", "preservation"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", default="toy")
    parser.add_argument("--steps", type=int, nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--quick", action="store_true", help=f"steps {QUICK_STEPS}, 2 seeds")
    parser.add_argument("--set", action="append", default=[], metavar="INPUT=VALUE",
                        help="a train() input for every run (value parsed as JSON)")  # fmt: skip
    parser.add_argument("--lora-scale", type=float, help="evaluate at this LoRA scale (0.6)")
    parser.add_argument("--guidance-scale", type=float, help="evaluate at this guidance (7.5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest here)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the plot and JSON")
    args = parser.parse_args()

    os.environ.setdefault("SDXL_TUNER_CACHE", str(Path.home() / ".cache" / "sdxl-tuner"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from toyworld.evaluate import EvaluationSettings, ToyEvaluator, train_subject
    from toyworld.subject import write_subject_zip

    torch.set_num_threads(args.threads)
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    evaluation = EvaluationSettings()
    if args.quick:
        evaluation = replace(evaluation, seeds=QUICK_SEEDS)
    for name in ("lora_scale", "guidance_scale"):
        if getattr(args, name) is not None:
            evaluation = replace(evaluation, **{name: getattr(args, name)})
    extra = parse_settings(args.set)  # checked against train()'s declarations by each run
    cache = Path(os.environ["SDXL_TUNER_CACHE"])

    # 1. The base model's own row.
    evaluator = ToyEvaluator(args.base_model, cache, evaluation)
    base = evaluator.evaluate()
    rows = [{"method": "base model", "steps": 0, "seconds": 0.0, **base.fidelity.as_dict()}]
    samples = {"base model": base.first_seed()}
    ceiling = evaluator.subject_ceiling()
    print(f"Subject ceiling (emblem photos that survive the VAE's round trip): {ceiling:.2f}")
    print(table(rows), flush=True)

    # 2. Each method at each step count, trained from scratch through train().
    with tempfile.TemporaryDirectory(prefix="quality-") as work:
        subject_zip = write_subject_zip(Path(work) / "emblem.zip")
        for method in args.methods:
            for count in steps:
                inputs = dict(resolution=64, seed=0, max_train_steps=count,
                              checkpointing_steps=0, verbose=False)  # fmt: skip
                inputs.update(extra)
                inputs.update(METHODS[method])
                trained = train_subject(subject_zip, args.base_model, Path(work), **inputs)
                scores = evaluator.evaluate(str(trained.path))
                rows.append({"method": method, "steps": count, "seconds": trained.seconds,
                             **scores.fidelity.as_dict()})  # fmt: skip
                samples[f"{method}, {count} steps"] = scores.first_seed()
                trained.path.unlink()
                print(table(rows[-1:], header=False), flush=True)

    print("\n" + table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    record = dict(
        base_model=args.base_model,
        steps=list(steps),
        set=args.set,
        evaluation=dataclasses.asdict(evaluation),
        subject_ceiling=ceiling,
        rows=rows,
    )
    (args.out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    plot(rows, args.out / "quality.png", args.base_model)
    sample_sheet(samples, steps[-1]).save(args.out / "samples.png")
    print(f"Wrote results.json, quality.png and samples.png to {args.out}")


def table(rows: list[dict], header: bool = True) -> str:
    names = ("method", "steps", "train s", *COLUMNS)
    lines = []
    if header:
        lines += ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        cells = [row["method"], str(row["steps"]), f"{row['seconds']:.0f}"]
        cells += [f"{row[c]:.3f}" if c == "drift" else f"{row[c]:.2f}" for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], file: Path, base_model: str) -> None:
    """The three metrics against steps (top) and training wall time (bottom), per method."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    base = rows[0]
    methods = list(dict.fromkeys(row["method"] for row in rows[1:]))
    figure, axes = pyplot.subplots(2, len(PLOTTED), figsize=(12, 7), squeeze=False)
    for column, (key, title) in enumerate(PLOTTED):
        for line, x_key in enumerate(("steps", "seconds")):
            axis = axes[line][column]
            for method in methods:
                points = [base] + [row for row in rows[1:] if row["method"] == method]
                axis.plot([p[x_key] for p in points], [p[key] for p in points], "o-", label=method)
            axis.set_ylim(-0.05, 1.05)
            axis.set_xlabel("training steps" if x_key == "steps" else "train() wall time (s)")
            axis.set_title(title)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"Emblem fine-tuning on BASE_MODEL={base_model}, 64x64 (step 0: base model)")
    figure.tight_layout()
    figure.savefig(file, dpi=80)


def sample_sheet(samples: dict[str, list], last_steps: int):
    """One row per model (the base, each method at its last step count): the first seed's
    image of every subject prompt, then of every scene prompt."""
    from PIL import Image, ImageDraw

    rows = {
        k: v for k, v in samples.items() if k == "base model" or k.endswith(f", {last_steps} steps")
    }
    tile, label = 64, 150
    columns = max(len(images) for images in rows.values())
    sheet = Image.new("RGB", (label + columns * tile, len(rows) * tile), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (name, images) in enumerate(rows.items()):
        draw.text((4, row * tile + tile // 2 - 6), name, fill="black")
        for column, image in enumerate(images):
            sheet.paste(image.resize((tile, tile)), (label + column * tile, row * tile))
    return sheet


if __name__ == "__main__":
    main()
