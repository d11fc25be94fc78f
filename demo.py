"""The README's demo: train on the bundled example photos with the embedded tiny SDXL, then
generate with the trained weights, in-process through the same entry points as `cog train` /
`cog predict`. Uses the embedded tiny models unless BASE_MODEL etc. are already set."""

import os
import time
from pathlib import Path

OUTPUT_DIR = Path("outputs/demo")
WEIGHTS = OUTPUT_DIR / "trained_model.tar"
TRAIN_INPUTS = {
    "input_images": "@examples/cat_photos.zip",
    "seed": 0,
    "resolution": 64,  # the tiny model's size
    "train_batch_size": 2,
    "max_train_steps": 30,
    "lr_warmup_steps": 0,
    "lora_rank": 8,
    "checkpointing_steps": 15,
    "sample_prompts": "a photo of TOK on the beach",
}
PREDICT_INPUTS = {
    "prompt": "a photo of TOK on the beach",
    "width": 64,
    "height": 64,
    "num_outputs": 2,
    "num_inference_steps": 4,
    "seed": 42,
}


def cog_arguments(inputs: dict) -> list[str]:
    return [arg for name, value in inputs.items() for arg in ("-i", f"{name}={value}")]


def main() -> None:
    from weights.settings import MODEL_VARIABLES, TINY

    for variable in MODEL_VARIABLES:
        os.environ.setdefault(variable, TINY)
    from serving.cli import main as cog  # after the models are chosen

    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if cog(["train", *cog_arguments(TRAIN_INPUTS), "-o", str(WEIGHTS)]):
        raise SystemExit("Training failed (see above).")
    trained = time.perf_counter()
    os.chdir(OUTPUT_DIR)  # `cog predict` writes output.0.png, ... into the current folder
    if cog(["predict", "--weights", WEIGHTS.name, *cog_arguments(PREDICT_INPUTS)]):
        raise SystemExit("Generation failed (see above).")
    print(f"Trained in {trained - started:.1f}s: {WEIGHTS}")
    print(f"Generated with the trained weights in {time.perf_counter() - trained:.1f}s:")
    for path in sorted(Path().glob("output.*.png")):
        print(f"  {OUTPUT_DIR / path}")


if __name__ == "__main__":
    main()
