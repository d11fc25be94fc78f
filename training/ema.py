"""An exponential moving average of the trained weights, which is what gets saved.

Averaging the last steps' weights smooths out where the final step happened to land. The
decay warms up as diffusers' `EMAModel` does, min(decay, (1 + t) / (10 + t)), so a short
run's average is not dominated by the untrained starting point.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class WeightAverage:
    """The average of `parameters` (name -> tensor), updated after each optimizer step."""

    def __init__(self, parameters: dict[str, torch.Tensor], decay: float):
        self.parameters = parameters
        self.decay = decay
        self.average = {n: p.detach().float().clone() for n, p in parameters.items()}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights after optimizer step `step` (0-based)."""
        keep = self.decay_at(step)
        for name, parameter in self.parameters.items():
            self.average[name].lerp_(parameter.detach().float(), 1 - keep)

    @contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model for the duration (saving, samples)."""
        trained = {n: p.detach().clone() for n, p in self.parameters.items()}
        for name, parameter in self.parameters.items():
            parameter.copy_(self.average[name])
        try:
            yield
        finally:
            for name, parameter in self.parameters.items():
                parameter.copy_(trained[name])

    def state(self) -> dict[str, torch.Tensor]:
        return {n: t.cpu().contiguous() for n, t in self.average.items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.average):
            raise ValueError("The checkpoint's weight average covers other parameters.")
        for name, tensor in state.items():
            self.average[name].copy_(tensor)
