"""The README's demo: generate with the embedded tiny SDXL, in-process, and say where the
images are. Uses the tiny models unless BASE_MODEL etc. are already set."""

import os
import shutil
import time
from pathlib import Path

OUTPUT_DIR = Path("outputs/demo")


def main() -> None:
    for variable in ("BASE_MODEL", "REFINER_MODEL", "SAFETY_CHECKER_MODEL"):
        os.environ.setdefault(variable, "tiny")
    from predict import Predictor, predict_defaults  # after the models are chosen

    started = time.perf_counter()
    predictor = Predictor()
    predictor.setup()
    inputs = dict(
        predict_defaults(),
        prompt="a photo of a cat on the beach",
        negative_prompt="",
        width=64,
        height=64,
        num_outputs=2,
        num_inference_steps=4,
        guidance_scale=7.5,
        seed=42,
    )
    images = predictor.predict(**inputs)
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        shutil.copy(image, OUTPUT_DIR / f"output.{index}.png")
    print(f"Generated {len(images)} images in {time.perf_counter() - started:.1f}s:")
    for index in range(len(images)):
        print(f"  {OUTPUT_DIR / f'output.{index}.png'}")


if __name__ == "__main__":
    main()
