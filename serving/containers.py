"""The two Cog containers one code base builds: SDXL / SD 1.5 (Replicate's SDXL model's
inputs) and FLUX.1 (Replicate's Flux trainer's and predictor's inputs). Each has its own entry
files and Cog config; both run the same engine, trainer and store.

    cog build                     # cog.yaml: the SDXL / SD 1.5 container
    cog build -f cog.flux.yaml    # the FLUX.1 container
"""

from __future__ import annotations

from dataclasses import dataclass

from families import FLUX, SDXL, ModelFamily


@dataclass(frozen=True)
class Container:
    name: str
    family: ModelFamily  # whose BASE_MODEL is the default
    predictor: str  # Cog's `predict:` reference
    trainer: str  # Cog's `train:` reference
    cog_config: str  # the file `cog build -f` reads


CONTAINERS = {
    "sdxl": Container("sdxl", SDXL, "predict.py:Predictor", "train.py:train", "cog.yaml"),
    "flux": Container(
        "flux", FLUX, "predict_flux.py:Predictor", "train_flux.py:train", "cog.flux.yaml"
    ),
}
DEFAULT_CONTAINER = "sdxl"
