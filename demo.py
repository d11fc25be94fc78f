"""The README's demo: train on the bundled emblem photos (a subject the toy base has never
seen) on top of the toy base, then generate with the trained weights, in-process through the
same entry points as `cog train` / `cog predict`. Uses `BASE_MODEL=toy` (the tiny SDXL
pretrained on the toy world, which brings the embedded tiny refiner and preprocessors) unless
BASE_MODEL is set."""

import os
import time
from pathlib import Path

OUTPUT_DIR = Path("outputs/demo")
WEIGHTS = OUTPUT_DIR / "trained_model.tar"
PROMPTS = [
    "a TOK on a plain blue background",  # the learnt subject, in a new setting
    "a red star on a striped yellow background",  # the toy world the base already draws
]
TRAIN_INPUTS = {  # the defaults (pivotal tuning) but for the toy's size and a short run
    "input_images": "@examples/emblem_photos.zip",
    "seed": 0,
    "resolution": 64,  # the toy world's size
    "max_train_steps": 400,
    "checkpointing_steps": 0,
    "sample_prompts": PROMPTS[0],
}
PREDICT_INPUTS = {
    "width": 64,
    "height": 64,
    "num_outputs": 2,
    "num_inference_steps": 20,
    "seed": 42,
    "disable_safety_checker": True,  # the tiny safety checker's verdicts are random
}


def cog_arguments(inputs: dict) -> list[str]:
    return [arg for name, value in inputs.items() for arg in ("-i", f"{name}={value}")]


def main() -> None:
    from weights.settings import TOY

    os.environ.setdefault("BASE_MODEL", TOY)
    from serving.cli import main as cog  # after the models are chosen

    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if cog(["train", *cog_arguments(TRAIN_INPUTS), "-o", str(WEIGHTS)]):
        raise SystemExit("Training failed (see above).")
    trained = time.perf_counter()
    os.chdir(OUTPUT_DIR)  # `cog predict` writes output.0.png, ... into the current folder
    for index, prompt in enumerate(PROMPTS):
        inputs = {"prompt": prompt, **PREDICT_INPUTS}
        if cog(["predict", "--weights", WEIGHTS.name, *cog_arguments(inputs)]):
            raise SystemExit("Generation failed (see above).")
        for path in Path().glob("output.*.png"):
            path.rename(f"prompt{index}-{path.name}")
    print(f"Trained in {trained - started:.1f}s: {WEIGHTS}")
    print(f"Generated with the trained weights in {time.perf_counter() - trained:.1f}s:")
    for index, prompt in enumerate(PROMPTS):
        print(f"  {prompt!r}:")
        for path in sorted(Path().glob(f"prompt{index}-output.*.png")):
            print(f"    {OUTPUT_DIR / path}")


if __name__ == "__main__":
    main()
