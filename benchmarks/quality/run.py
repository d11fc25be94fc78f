"""Fine-tuning quality in the toy world: LoRA, textual inversion, pivotal tuning and full
fine-tuning of the emblem (or of the dusk style) at a few step counts, over several training
seeds, against the base model (step 0).

    .venv/bin/python benchmarks/quality/run.py                  # base model `toy`, 5 seeds
    .venv/bin/python benchmarks/quality/run.py --quick          # 400 steps, fewer seeds
    .venv/bin/python benchmarks/quality/run.py --set lora_lr=1e-3 --steps 100 200
    .venv/bin/python benchmarks/quality/run.py --methods "pivotal tuning" --training-seeds 0 1
    .venv/bin/python benchmarks/quality/run.py --concept style --steps 200 400

Every run is the Cog `train()` on the emblem zip (`toyworld.subject`; with `--concept style`
the dusk style's zip, `toyworld.style`, and `lora_type=style`) with the declared defaults
except resolution 64, the step count, the training seed, no checkpoints, and what `--set`
gives; each method changes only the inputs listed in METHODS. The metrics are
`toyworld.evaluate`'s (see its docstring). Prints a markdown table per training seed and one of
the mean, standard error and worst seed per method and step count; writes the plot and the
figures as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
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
TRAINING_SEEDS = (0, 1, 2, 3, 4)
# Reported over training seeds as the mean and the worst seed: the lowest, or for drift and
# leak (lower is better) the highest.
LOWER_IS_BETTER = ("drift", "leak")
CONCEPTS = ("subject", "style")


@dataclass(frozen=True)
class Concept:
    """What a concept trains on and how it is measured."""

    name: str
    title: str  # the plot's
    write_zip: Callable[[Path, int], Path]  # the training photos: the zip and their count
    inputs: dict  # the train() inputs every run adds to its method's
    evaluate: Callable  # ToyEvaluator.evaluate or .evaluate_style
    ceiling: Callable[[], float]  # share of photos whose look survives the VAE's round trip

    @property
    def plotted(self) -> tuple[tuple[str, str], ...]:
        return (
            (self.name, f"{self.name} fidelity"),
            ("prompt", "prompt fidelity"),
            ("preserved", "preservation"),
        )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", default="toy")
    parser.add_argument("--steps", type=int, nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--concept", choices=CONCEPTS, default="subject",
                        help="the emblem (subject) or the dusk style")  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help=f"steps {QUICK_STEPS}, 2 evaluation seeds"
    )
    parser.add_argument("--photos", type=int, default=8,
                        help="photos in the concept's zip (8, as the example sets)")  # fmt: skip
    parser.add_argument("--training-seeds", type=int, nargs="+", default=list(TRAINING_SEEDS))
    parser.add_argument("--evaluation-seeds", type=int, nargs="+",
                        help="the seeds every prompt is drawn with (0 1 2 3)")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="INPUT=VALUE",
                        help="a train() input for every run (value parsed as JSON)")  # fmt: skip
    parser.add_argument("--lora-scale", type=float, help="evaluate at this LoRA scale (0.6)")
    parser.add_argument("--guidance-scale", type=float, help="evaluate at this guidance (7.5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest here)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the plot and JSON")
    args = parser.parse_args()
    if "seed" in parse_settings(args.set):
        parser.error("--set seed=… would train every seed alike: use --training-seeds.")
    return args


def evaluation_settings(args: argparse.Namespace, settings):
    """`settings` (EvaluationSettings()) with what the command line changes."""
    if args.quick:
        settings = replace(settings, seeds=QUICK_SEEDS)
    for name in ("lora_scale", "guidance_scale"):
        if getattr(args, name) is not None:
            settings = replace(settings, **{name: getattr(args, name)})
    if args.evaluation_seeds:
        settings = replace(settings, seeds=tuple(args.evaluation_seeds))
    return settings


def main() -> None:
    args = parse_arguments()
    os.environ.setdefault("SDXL_TUNER_CACHE", str(Path.home() / ".cache" / "sdxl-tuner"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from toyworld.evaluate import EvaluationSettings, ToyEvaluator, train_on_zip
    from toyworld.style import write_style_zip
    from toyworld.subject import write_subject_zip

    torch.set_num_threads(args.threads)
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    evaluation = evaluation_settings(args, EvaluationSettings())
    extra = parse_settings(args.set)  # checked against train()'s declarations by each run
    cache = Path(os.environ["SDXL_TUNER_CACHE"])

    # 1. The base model's own row.
    evaluator = ToyEvaluator(args.base_model, cache, evaluation)
    concept = {
        "subject": Concept("subject", "Emblem", write_subject_zip, {}, evaluator.evaluate,
                           evaluator.subject_ceiling),
        "style": Concept("style", "Dusk style", write_style_zip, {"lora_type": "style"},
                         evaluator.evaluate_style, evaluator.style_ceiling),
    }[args.concept]  # fmt: skip
    base = concept.evaluate()
    columns = list(base.fidelity.as_dict())
    rows = [{"method": "base model", "steps": 0, "seconds": 0.0, **base.fidelity.as_dict()}]
    samples = {"base model": base.first_seed()}
    ceiling = concept.ceiling()
    print(f"{concept.name.capitalize()} ceiling (photos whose {concept.name} survives the VAE's "
          f"round trip): {ceiling:.2f}")  # fmt: skip
    print(table(rows, columns), flush=True)

    # 2. Each method at each step count, trained from scratch through train().
    with tempfile.TemporaryDirectory(prefix="quality-") as work:
        photos = concept.write_zip(Path(work) / f"{concept.name}.zip", args.photos)
        for method in args.methods:
            for count in steps:
                for seed in args.training_seeds:
                    inputs = dict(resolution=64, seed=seed, max_train_steps=count,
                                  checkpointing_steps=0, verbose=False)  # fmt: skip
                    inputs.update(concept.inputs)
                    inputs.update(extra)
                    inputs.update(METHODS[method])
                    trained = train_on_zip(photos, args.base_model, Path(work), **inputs)
                    scores = concept.evaluate(str(trained.path))
                    fidelity = scores.fidelity.as_dict()
                    rows.append(
                        {"method": method, "steps": count, "training_seed": seed,
                         "seconds": trained.seconds, **fidelity}
                    )  # fmt: skip
                    if seed == args.training_seeds[0]:
                        samples[f"{method}, {count} steps"] = scores.first_seed()
                    trained.path.unlink()
                    print(table(rows[-1:], columns, header=False), flush=True)

    print("\nPer training seed:\n" + table(rows, columns))
    summary = summarise(rows[1:], columns)
    print(
        f"\nOver training seeds {args.training_seeds}:\n" + summary_table(rows[0], summary, columns)
    )
    args.out.mkdir(parents=True, exist_ok=True)
    record = dict(
        base_model=args.base_model,
        concept=concept.name,
        photos=args.photos,
        steps=list(steps),
        set=args.set,
        evaluation=dataclasses.asdict(evaluation),
        ceiling=ceiling,
        training_seeds=args.training_seeds,
        rows=rows,
        summary=summary,
    )
    (args.out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    means = [{**group, **group["mean"]} for group in summary]
    plot([rows[0], *means], args.out / "quality.png", args.base_model, concept)
    sample_sheet(samples, steps[-1]).save(args.out / "samples.png")
    print(f"Wrote results.json, quality.png and samples.png to {args.out}")


def table(rows: list[dict], columns: list[str], header: bool = True) -> str:
    names = ("method", "steps", "seed", "train s", *columns)
    lines = []
    if header:
        lines += ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        cells = [row["method"], str(row["steps"]), str(row.get("training_seed", "–"))]
        cells += [f"{row['seconds']:.0f}"] + [_figure(row[c], c) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarise(rows: list[dict], columns: list[str]) -> list[dict]:
    """Per method and step count: the mean, the standard error and the worst training seed of
    every metric, and the mean training time."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["steps"]), []).append(row)
    summary = []
    for (method, steps), group in groups.items():
        values = {c: [row[c] for row in group] for c in columns}
        summary.append({
            "method": method,
            "steps": steps,
            "seeds": [row["training_seed"] for row in group],
            "seconds": statistics.fmean(row["seconds"] for row in group),
            "mean": {c: statistics.fmean(v) for c, v in values.items()},
            "stderr": {
                c: statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else 0.0
                for c, v in values.items()
            },
            "worst": {c: (max if c in LOWER_IS_BETTER else min)(v) for c, v in values.items()},
        })  # fmt: skip
    return summary


def summary_table(base: dict, summary: list[dict], columns: list[str]) -> str:
    """Mean ± standard error (worst seed) of each metric."""
    names = ("method", "steps", "seeds", "train s", *columns)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    base_cells = [_figure(base[c], c) for c in columns]
    lines.append("| " + " | ".join(["base model", "0", "–", "0", *base_cells]) + " |")
    for group in summary:
        cells = [group["method"], str(group["steps"]), str(len(group["seeds"]))]
        cells.append(f"{group['seconds']:.0f}")
        for c in columns:
            mean, error, worst = group["mean"][c], group["stderr"][c], group["worst"][c]
            cells.append(f"{_figure(mean, c)} ± {_figure(error, c)} ({_figure(worst, c)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figure(value: float, column: str) -> str:
    return f"{value:.3f}" if column == "drift" else f"{value:.2f}"


def plot(rows: list[dict], file: Path, base_model: str, concept: Concept) -> None:
    """The three metrics against steps (top) and training wall time (bottom), per method."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    base = rows[0]
    methods = list(dict.fromkeys(row["method"] for row in rows[1:]))
    figure, axes = pyplot.subplots(2, len(concept.plotted), figsize=(12, 7), squeeze=False)
    for column, (key, title) in enumerate(concept.plotted):
        for line, x_key in enumerate(("steps", "seconds")):
            axis = axes[line][column]
            for method in methods:
                points = [base] + [row for row in rows[1:] if row["method"] == method]
                axis.plot([p[x_key] for p in points], [p[key] for p in points], "o-", label=method)
            axis.set_ylim(-0.05, 1.05)
            axis.set_xlabel("training steps" if x_key == "steps" else "train() wall time (s)")
            axis.set_title(title)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(
        f"{concept.title} fine-tuning on BASE_MODEL={base_model}, 64x64 (step 0: base model)"
    )
    figure.tight_layout()
    figure.savefig(file, dpi=80)


def sample_sheet(samples: dict[str, list], last_steps: int):
    """One row per model (the base, each method at its last step count): the first seed's
    image of every subject (or style) prompt, then of every scene prompt."""
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
