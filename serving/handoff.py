"""Folders for the files a call hands to Cog as its outputs.

Cog uploads (or inlines) a returned file after the call returns and never deletes it, so a
long-lived server would keep every image and tarball it ever produced. Each call gets a fresh
folder; the previous call's folder is deleted when the next call begins (Cog runs one call at
a time and has sent the previous outputs by then), and the last one when the process exits.
A process killed before it could clean up leaves its last folder: the next process with the
same prefix deletes it (weights/scratch.py: the folder names say which process made them).
"""

from __future__ import annotations

import atexit
import shutil
from pathlib import Path

from weights.scratch import process_folder, remove_orphans


class OutputHandoff:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.current: Path | None = None
        remove_orphans(prefix)
        atexit.register(self.release)

    def next_folder(self) -> Path:
        """A new, empty folder for this call's outputs; the previous call's is deleted."""
        self.release()
        self.current = process_folder(self.prefix)
        return self.current

    def release(self) -> None:
        if self.current is not None:
            shutil.rmtree(self.current, ignore_errors=True)
            self.current = None
