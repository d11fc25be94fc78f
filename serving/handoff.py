"""Folders for the files a call hands to Cog as its outputs.

Cog uploads (or inlines) a returned file after the call returns and never deletes it, so a
long-lived server would keep every image and tarball it ever produced. Each call gets a fresh
folder; the previous call's folder is deleted when the next call begins (Cog runs one call at
a time and has sent the previous outputs by then), and the last one when the process exits.
A process killed before it could clean up leaves its last folder: the next process with the
same prefix deletes it (the folder names carry the process id).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path


class OutputHandoff:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.current: Path | None = None
        self._remove_orphans()
        atexit.register(self.release)

    def next_folder(self) -> Path:
        """A new, empty folder for this call's outputs; the previous call's is deleted."""
        self.release()
        self.current = Path(tempfile.mkdtemp(prefix=f"{self.prefix}{os.getpid()}-"))
        return self.current

    def release(self) -> None:
        if self.current is not None:
            shutil.rmtree(self.current, ignore_errors=True)
            self.current = None

    def _remove_orphans(self) -> None:
        """Folders of processes that no longer run."""
        for folder in Path(tempfile.gettempdir()).glob(f"{self.prefix}*-*"):
            pid = folder.name.removeprefix(self.prefix).split("-", 1)[0]
            if pid.isdigit() and not _running(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
