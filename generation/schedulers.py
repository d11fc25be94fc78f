"""The schedulers a request may name (Replicate's SDXL names), in one table."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
)

# name -> (scheduler class, settings that override the model's scheduler config)
SCHEDULERS = {
    "DDIM": (DDIMScheduler, {}),
    "DPMSolverMultistep": (DPMSolverMultistepScheduler, {}),
    "HeunDiscrete": (HeunDiscreteScheduler, {}),
    "KarrasDPM": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "K_EULER_ANCESTRAL": (EulerAncestralDiscreteScheduler, {}),
    "K_EULER": (EulerDiscreteScheduler, {}),
    # PLMS, as Stable Diffusion ships PNDM: the Runge-Kutta warm-up fails below ~4 steps.
    "PNDM": (PNDMScheduler, {"skip_prk_steps": True}),
}
DEFAULT_SCHEDULER = "K_EULER"


class SchedulerCache:
    """One scheduler per name, built from a model's own scheduler config on first use
    (schedulers reset their step state in `set_timesteps`, so reuse is safe)."""

    def __init__(self, config):
        self.config = config
        self._built = {}

    def get(self, name: str):
        if name not in SCHEDULERS:
            raise ValueError(f"Unknown scheduler {name!r}: use one of {', '.join(SCHEDULERS)}.")
        if name not in self._built:
            scheduler_class, overrides = SCHEDULERS[name]
            self._built[name] = scheduler_class.from_config(self.config, **overrides)
        return self._built[name]
