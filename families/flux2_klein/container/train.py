"""Cog `train()` of the FLUX.2 [klein] container: the FLUX.1 container's inputs (Replicate's
Flux LoRA trainer's names and defaults), training on FLUX.2 [klein] base models."""

import weights.quiet  # noqa: F401 (first: keeps libraries' import-time noise out of logs)

# isort: split
from families.flux2_klein import KLEIN
from train_flux import trainer

train = trainer(KLEIN)
