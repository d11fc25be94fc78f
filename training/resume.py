"""Where a training continues from: the newest checkpoint that kept its training state, in a
work folder (`python -m training --resume`) or in an earlier run's tarball (`resume_from`).

Every random draw of the loop is a function of (seed, step, process), and a checkpoint holds
the trained parameters with the optimizer's and the scheduler's state, so a run that goes on
from one ends as the run that never stopped (training/loop.py).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from formats.bundle import METRICS_FILE, BundleFiles, Role, checkpoint_folders, checkpoint_step
from training.loop import STATE_DIR
from weights.download import describe_source
from weights.references import is_remote
from weights.settings import ModelSettings
from weights.store import ModelStore


@dataclass(frozen=True)
class ResumePoint:
    """Where a run continues from: a checkpoint with its training state, the record of the
    run that wrote it (empty for a work folder that has none yet) and its metrics."""

    checkpoint: Path
    record: dict
    metrics: Path | None = None

    @classmethod
    def find(cls, folder: Path, source: str) -> ResumePoint:
        """The newest resumable checkpoint in an unpacked tarball or a work folder (or a
        checkpoint folder itself); `source` names it in messages."""
        folder = Path(folder)
        if (folder / STATE_DIR).is_dir():  # a checkpoint, inside a tarball or a work folder
            checkpoint, bundle = folder, BundleFiles.open(folder.parents[1], source)
        else:
            bundle = BundleFiles.open(folder, source)
            found = checkpoint_folders(bundle.path(Role.CHECKPOINTS))
            checkpoint = found[-1] if found else None
        if checkpoint is None or not (checkpoint / STATE_DIR).is_dir():
            raise ValueError(
                f"resume_from: {source} holds no checkpoint to resume from. Resume from the "
                "trained_model.tar of a run with checkpointing_steps > 0 (full fine-tunes "
                "resume only with `python -m training --resume`)."
            )
        record_file = bundle.path(Role.TRAINING_RECORD)
        record = json.loads(record_file.read_text()) if record_file else {}
        return cls(checkpoint, record, bundle.path(Role.METRICS))

    @classmethod
    def fetch(cls, reference, settings: ModelSettings) -> ResumePoint:
        """From a tarball's URL (fetched and unpacked through the model store), or from the
        operator's own tarball or folder."""
        source = describe_source(str(reference))
        if not is_remote(str(reference)) and Path(reference).is_dir():
            return cls.find(Path(reference), source)
        entry = ModelStore.from_settings(settings).fetch(str(reference))
        return cls.find(entry.content, source)

    @property
    def step(self) -> int:
        return checkpoint_step(self.checkpoint)

    @property
    def seed(self) -> int | None:
        return self.record.get("config", {}).get("seed")

    def differing_inputs(self, inputs: dict) -> list[str]:
        """The inputs given now that differ from the resumed run's (its record's)."""
        earlier = self.record.get("inputs", {})
        return sorted(
            name
            for name, value in inputs.items()
            if name in earlier and earlier[name] != value and value is not None
        )

    def carry_metrics(self, run_dir: Path) -> None:
        """The earlier run's metrics, into a new work folder (the loop cuts them back to the
        checkpoint's step), so the tarball's loss curve covers the whole run."""
        ours = run_dir / METRICS_FILE
        if self.metrics is not None and not ours.exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.metrics, ours)
