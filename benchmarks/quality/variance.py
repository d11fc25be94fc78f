"""Which random draws make one training seed learn the subject and another not?

    .venv/bin/python benchmarks/quality/variance.py                        # the defaults, 400 steps
    .venv/bin/python benchmarks/quality/variance.py --seeds 0 1 2 --set lora_plus_ratio=16
    .venv/bin/python benchmarks/quality/variance.py --seeds 0 4 --split-start

A training seed fixes two kinds of randomness: where training starts (the new tokens'
initial embeddings and the LoRA's A matrices) and what it sees (the batch order, the noise and
the timesteps of every step). This trains the emblem through `train()` as `run.py` does, once
with the start drawn from each seed and the rest from seed 0, and once the other way round,
and evaluates every bundle as `run.py` does (`--split-start` also varies the tokens' start and
the LoRA's apart). If the spread follows the start, initialisation decides; if it follows the
draws, the path does. Splitting the seed is an experiment the
trainer does not offer as an input: the two initialisers are wrapped for the run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from training.config import parse_settings  # noqa: E402 (after the path set-up)


@contextmanager
def start_from(tokens_seed: int, lora_seed: int):
    """The new tokens initialised from `tokens_seed` and the LoRA's A matrices from
    `lora_seed`, whatever the training seed."""
    import torch

    from formats.tokens import TokenEmbeddingsHandler
    from training import parameter_groups

    add_lora, initialize = parameter_groups.add_lora, TokenEmbeddingsHandler.initialize_new_tokens

    def seeded_add_lora(*args, **kwargs):
        state = torch.get_rng_state()
        torch.manual_seed(lora_seed)
        try:
            return add_lora(*args, **kwargs)
        finally:
            torch.set_rng_state(state)

    def seeded_initialize(handler, count, generator=None, init_word=None):
        return initialize(handler, count, torch.Generator().manual_seed(tokens_seed), init_word)

    parameter_groups.add_lora = seeded_add_lora
    TokenEmbeddingsHandler.initialize_new_tokens = seeded_initialize
    try:
        yield
    finally:
        parameter_groups.add_lora = add_lora
        TokenEmbeddingsHandler.initialize_new_tokens = initialize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", default="toy")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", action="append", default=[], metavar="INPUT=VALUE")
    parser.add_argument("--split-start", action="store_true",
                        help="also vary the tokens' and the LoRA's start apart")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    os.environ.setdefault("SDXL_TUNER_CACHE", str(Path.home() / ".cache" / "sdxl-tuner"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from toyworld.evaluate import ToyEvaluator, train_on_zip
    from toyworld.subject import write_subject_zip

    torch.set_num_threads(args.threads)
    evaluator = ToyEvaluator(args.base_model, Path(os.environ["SDXL_TUNER_CACHE"]))
    first, *others = args.seeds
    # (tokens' seed, LoRA A's seed, the draws' seed) of each run, per sweep.
    sweeps = {
        "the start (tokens, LoRA A)": [(s, s, first) for s in args.seeds],
        "the draws (batches, noise, timesteps)": [(first, first, s) for s in args.seeds],
    }
    if args.split_start:
        sweeps["the tokens' start only"] = [(s, first, first) for s in args.seeds]
        sweeps["the LoRA's start only"] = [(first, s, first) for s in args.seeds]
    print("| tokens' seed | LoRA A's seed | draws' seed | subject | preserved | drift |")
    print("|---|---|---|---|---|---|")
    results = {}
    with tempfile.TemporaryDirectory(prefix="variance-") as work:
        photos = write_subject_zip(Path(work) / "emblem.zip")
        inputs = dict(resolution=64, max_train_steps=args.steps, checkpointing_steps=0,
                      verbose=False, **parse_settings(args.set))  # fmt: skip
        for run in dict.fromkeys(r for runs in sweeps.values() for r in runs):
            tokens, lora, draws = run
            with start_from(tokens, lora):
                trained = train_on_zip(photos, args.base_model, Path(work), **inputs, seed=draws)
            fidelity = evaluator.evaluate(str(trained.path)).fidelity
            trained.path.unlink()
            results[run] = fidelity
            print(f"| {tokens} | {lora} | {draws} | {fidelity.subject:.2f} | "
                  f"{fidelity.preserved:.2f} | {fidelity.drift:.3f} |", flush=True)  # fmt: skip

    print("\n| what varies | seeds | subject: mean ± s.d. (worst) | preserved: mean ± s.d. |")
    print("|---|---|---|---|")
    for name, runs in sweeps.items():
        subject = [results[r].subject for r in runs]
        preserved = [results[r].preserved for r in runs]
        cells = [
            f"{statistics.fmean(subject):.2f} ± {statistics.stdev(subject):.2f} "
            f"({min(subject):.2f})",
            f"{statistics.fmean(preserved):.2f} ± {statistics.stdev(preserved):.2f}",
        ]
        print(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
