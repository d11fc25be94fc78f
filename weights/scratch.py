"""Folders a process works in under the temporary directory, and those a dead process left.

A folder's name says which process made it: `<prefix><pid>-<start>-<random>`, `start` being
the process's start time (from /proc; 0 where there is none). A process that is killed
(`kill -9`, out of memory) cannot clean up after itself, so whoever next sweeps the prefix
removes the folders whose process no longer runs. The start time tells a dead process from a
new one that was given the same pid, as a restarted container's worker usually is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROC = Path("/proc")


def process_folder(prefix: str) -> Path:
    """A new, empty folder in the temporary directory that names this process."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{_identity(os.getpid())}-"))


@contextmanager
def call_folder(prefix: str) -> Iterator[Path]:
    """A `process_folder` for one call, removed when the call ends, whatever happens."""
    folder = process_folder(prefix)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_orphans(prefix: str) -> list[Path]:
    """Remove the `prefix` folders of processes that no longer run; returns them."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{prefix}*-*-*"):
        pid, start, _ = folder.name.removeprefix(prefix).split("-", 2)
        if pid.isdigit() and _identity(int(pid)) != f"{pid}-{start}":
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _identity(pid: int) -> str | None:
    """`<pid>-<start time>` of a running process, None if none runs under that pid."""
    if not PROC.is_dir():  # no /proc (macOS): the pid alone
        return f"{pid}-0" if _running(pid) else None
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # Fields 3 and 22 are the state and the start time (the command name before them may
    # hold spaces and parentheses). A zombie is dead, only not yet reaped by its parent.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else f"{pid}-{fields[19]}"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
