"""Running one of diffusers' example training scripts, unedited, in a worker process of a
benchmark, as `accelerate launch` would run it on one process, with its optimizer steps timed.

The scripts are not part of the diffusers package (take them from diffusers' repository at
the commit benchmarks/README.md names) and import packages this project does not need
(torchvision, and `datasets` for captioned image folders). Install those outside the
project's environment (`pip install --no-deps --target DIR …`) and pass the folders:
`worker_environment` puts them on the worker's PYTHONPATH.
"""

from __future__ import annotations

import os
import resource
import runpy
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path


def worker_environment(package_dirs: Sequence[Path] = ()) -> dict[str, str]:
    """The environment of a worker process: one thread, no hub access, unbuffered output,
    and `package_dirs` (folders of packages installed with `pip install --target`) first on
    the import path."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    paths = [str(folder) for folder in package_dirs] + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return env


def time_optimizer_steps() -> list[float]:
    """The end time of every optimizer step from now on in this process: both this project's
    loop and diffusers' scripts step through accelerate's `AcceleratedOptimizer`."""
    from accelerate.optimizer import AcceleratedOptimizer

    ends: list[float] = []
    original = AcceleratedOptimizer.step

    def timed_step(self, *arguments, **keywords):
        result = original(self, *arguments, **keywords)
        ends.append(time.perf_counter())
        return result

    AcceleratedOptimizer.step = timed_step
    return ends


def step_intervals(ends: Sequence[float]) -> list[float]:
    """Seconds between consecutive optimizer steps (the first step, with its start-up, is
    left out)."""
    return [b - a for a, b in zip(ends, ends[1:], strict=False)]


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_script(script: Path, arguments: Sequence[str]) -> None:
    """Run `script` in this process as `python script arguments…`, unedited."""
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        # PyPI's torchvision is a CUDA build whose compiled ops cannot load on a CPU torch;
        # the scripts use only its transforms, not the ops these modules register.
        sys.modules[name] = types.ModuleType(name)
    sys.argv = [str(script), *arguments]
    runpy.run_path(str(script), run_name="__main__")
