"""The Cog containers one code base builds: SDXL / SD 1.5 (Replicate's SDXL model's inputs),
FLUX.1 (Replicate's Flux trainer's and predictor's inputs) and FLUX.2 [klein] (the Flux
trainer's inputs; Replicate's klein model's reference images). Each has its own entry files
and Cog config; all run the same engine, trainer and store.

    cog build                      # cog.yaml: the SDXL / SD 1.5 container
    cog build -f cog.flux.yaml     # the FLUX.1 container
    cog build -f cog.klein.yaml    # the FLUX.2 [klein] container
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from families import FAMILIES, FLUX, SDXL, ModelFamily
from families.flux2_klein import KLEIN
from families.flux2_klein.container.request import KleinGenerationRequest
from generation.request import FluxGenerationRequest, GenerationRequest
from training.config import InvalidTrainingConfig


@dataclass(frozen=True)
class Container:
    name: str
    family: ModelFamily  # whose BASE_MODEL is the default
    predictor: str  # Cog's `predict:` reference
    trainer: str  # Cog's `train:` reference
    cog_config: str  # the file `cog build -f` reads
    request: type[GenerationRequest]  # its predict() inputs, defaults and ranges

    @property
    def trains(self) -> tuple[ModelFamily, ...]:
        """The families whose bases its trainer takes and its predictor serves (each family
        names its container)."""
        return tuple(f for f in FAMILIES.values() if f.container == self.name)

    @property
    def title(self) -> str:
        return " / ".join(family.title for family in self.trains)

    def check_trains(self, family: ModelFamily, base_model: str) -> None:
        """Refuse a base model of a family this container's trainer does not train: its
        weights would be refused by this container's predictor."""
        if family in self.trains:
            return
        other = next(c for c in CONTAINERS.values() if family in c.trains)
        raise InvalidTrainingConfig(
            f"base_model {base_model!r} is a model of the {family.title} family, and this is "
            f"the {self.title} trainer, whose weights the {self.title} predictor serves: it "
            f"trains {self.title} bases only. Train {family.title} in the {other.title} "
            f"container ({other.trainer}, `cog build -f {other.cog_config}`), or give a "
            f"base_model of the {self.title} family."
        )


CONTAINERS = {
    "sdxl": Container(
        "sdxl", SDXL, "predict.py:Predictor", "train.py:train", "cog.yaml", GenerationRequest
    ),
    "flux": Container(
        "flux",
        FLUX,
        "predict_flux.py:Predictor",
        "train_flux.py:train",
        "cog.flux.yaml",
        FluxGenerationRequest,
    ),
    "klein": Container(
        "klein",
        KLEIN,
        "families/flux2_klein/container/predict.py:Predictor",
        "families/flux2_klein/container/train.py:train",
        "cog.klein.yaml",
        KleinGenerationRequest,
    ),
}
DEFAULT_CONTAINER = "sdxl"


def entry_point(reference: str) -> tuple[str, str]:
    """A Cog reference `path/to/file.py:Name` as the module to import (`path.to.file`: entry
    files may sit in a family's folder) and the name in it."""
    file_name, name = reference.split(":")
    return file_name.removesuffix(".py").replace("/", "."), name


def load_entry(reference: str):
    """The predictor class or train function a Cog reference names."""
    module, name = entry_point(reference)
    return getattr(importlib.import_module(module), name)


def container_of(family: ModelFamily) -> Container:
    """The container whose default base model is of `family`."""
    return next(c for c in CONTAINERS.values() if c.family is family)
