"""Timing of the preprocessing stages, for the summary line and the benchmark."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StageClock:
    """Seconds spent per stage; `on_start(name)` lets a caller watch stages as they begin
    (the benchmark samples memory per stage that way)."""

    def __init__(self, on_start: Callable[[str], None] | None = None):
        self.seconds: dict[str, float] = {}
        self.on_start = on_start

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.on_start is not None:
            self.on_start(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
