"""Per-request overhead of `predict()` over calling the diffusers pipeline directly, on the
tiny model: input checks, the (no-op) weights switch, prompt substitution, scheduler
selection, safety checker, watermark and writing the files.

    .venv/bin/python benchmarks/bench_predict_overhead.py [--repeats 15] [--steps 20]
        [--base-model tiny-sd15]   # any BASE_MODEL: an SD 1.5 base has no refiner
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from weights.settings import MODEL_VARIABLES, TINY  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--base-model", help="BASE_MODEL (default: $BASE_MODEL, else tiny)")
    args = parser.parse_args()
    for variable in MODEL_VARIABLES:
        os.environ.setdefault(variable, TINY)
    if args.base_model:
        os.environ["BASE_MODEL"] = args.base_model
    os.environ.setdefault("SDXL_TUNER_CACHE", str(Path(tempfile.gettempdir()) / "bench-cache"))
    torch.set_num_threads(1)  # steadier timings on shared cores
    from predict import Predictor
    from serving.cli import declared_defaults

    predictor = Predictor()
    predictor.setup()
    pipeline = predictor.engine.base.txt2img
    refiner = predictor.engine.refiner
    for pipe in (pipeline, refiner.img2img if refiner else None):
        if pipe is not None:
            pipe.set_progress_bar_config(disable=True)
    request = dict(
        declared_defaults(),
        prompt="a photo of a cat",
        width=args.size,
        height=args.size,
        num_inference_steps=args.steps,
        seed=1,
    )

    def direct():
        pipeline(
            prompt=[request["prompt"]],
            negative_prompt=[request["negative_prompt"]],
            width=args.size,
            height=args.size,
            num_inference_steps=args.steps,
            guidance_scale=request["guidance_scale"],
            generator=torch.Generator("cpu").manual_seed(1),
        )

    cases = {
        "direct pipeline call": direct,
        "predict(), safety checker and watermark off": lambda: predictor.predict(
            **dict(request, disable_safety_checker=True, apply_watermark=False)
        ),
        "predict(), defaults (safety checker on)": lambda: predictor.predict(**request),
    }
    # Time spent inside the pipeline's __call__, to separate predict()'s own work from the
    # denoising it shares with the direct call (whole-call timings are noisy on shared cores).
    inside = []
    pipeline_call = type(pipeline).__call__

    def timed_call(self, *call_args, **call_kwargs):
        started = time.perf_counter()
        try:
            return pipeline_call(self, *call_args, **call_kwargs)
        finally:
            inside.append(time.perf_counter() - started)

    type(pipeline).__call__ = timed_call
    for run in cases.values():  # warm-up
        run()
    times = {name: [] for name in cases}
    outside = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved, so load changes hit every case alike
        for name, run in cases.items():
            inside.clear()
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
            outside[name].append(times[name][-1] - sum(inside))
    type(pipeline).__call__ = pipeline_call

    baseline = statistics.median(times["direct pipeline call"])
    family = predictor.engine.family.title
    print(
        f"\n{family}, {args.size}x{args.size}, {args.steps} steps, median of {args.repeats}, "
        "1 thread\n"
    )
    print(f"| {'call':<45} | seconds | vs direct | outside the pipeline call |")
    print(f"|{'-' * 47}|---------|-----------|---------------------------|")
    for name, samples in times.items():
        median, own = statistics.median(samples), statistics.median(outside[name])
        print(
            f"| {name:<45} | {median:7.3f} | {100 * (median / baseline - 1):+8.1f}% "
            f"| {own * 1000:8.1f} ms ({100 * own / baseline:4.1f}%)    |"
        )


if __name__ == "__main__":
    main()
