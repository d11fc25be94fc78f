"""A training's progress as lines of its log, for clients that follow a run through Cog's
async updates (the `logs` of each webhook event; docs/serving.md): one line per optimizer
step and one per sample image, each a prefix and a JSON object.

    sdxl-tuner:step {"step": 12, "total": 500, "loss": 0.0831, "seconds": 0.412}
    sdxl-tuner:sample {"step": 100, "index": 0, "prompt": "...", "thumbnail": "data:..."}

The trainer writes them (training/loop.py); `read_progress` reads them back from a log.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field

from PIL import Image

STEP_PREFIX = "sdxl-tuner:step "
SAMPLE_PREFIX = "sdxl-tuner:sample "
# Every webhook event carries the whole log so far: a run logs at most this many step lines
# (every n-th step of a longer one), and a sample travels as a small JPEG, a few kB, not the
# full image (that one is in the tarball's samples/).
MAX_STEP_LINES = 1000
THUMBNAIL_SIDE = 128
THUMBNAIL_QUALITY = 80


def logs_step(step: int, total: int) -> bool:
    """Whether step `step` of `total` gets a line: every n-th, and the last."""
    return step % max(1, total // MAX_STEP_LINES) == 0 or step == total


def step_line(step: int, total: int, loss: float, seconds: float) -> str:
    row = {"step": step, "total": total, "loss": round(loss, 6), "seconds": round(seconds, 4)}
    return STEP_PREFIX + json.dumps(row)


def sample_line(step: int, index: int, prompt: str, image: Image.Image) -> str:
    thumbnail = image.convert("RGB")
    thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    row = {"step": step, "index": index, "prompt": prompt, "thumbnail": uri}
    return SAMPLE_PREFIX + json.dumps(row)


@dataclass
class Progress:
    steps: list[dict] = field(default_factory=list)  # step lines' objects, in order
    samples: list[dict] = field(default_factory=list)

    @property
    def step(self) -> int:
        return self.steps[-1]["step"] if self.steps else 0

    @property
    def total(self) -> int | None:
        return self.steps[-1]["total"] if self.steps else None


def read_progress(logs: str) -> Progress:
    """The step and sample lines of a log (others, and lines cut off mid-way, are skipped)."""
    progress = Progress()
    for line in logs.splitlines():
        for prefix, rows in ((STEP_PREFIX, progress.steps), (SAMPLE_PREFIX, progress.samples)):
            # A progress bar on the other stream can share the line: the prefix is searched.
            start = line.rfind(prefix)
            if start >= 0:
                try:
                    rows.append(json.loads(line[start + len(prefix) :]))
                except ValueError:
                    pass
    return progress
