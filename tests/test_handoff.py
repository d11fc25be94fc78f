"""Output folders handed to Cog: one call's at a time, and none left by a killed process."""

import os
import subprocess
import sys
import tempfile

from serving.handoff import OutputHandoff
from weights.scratch import process_folder, remove_orphans


def test_each_call_deletes_the_previous_outputs_and_a_dead_processes_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    orphan = tmp_path / f"test-outputs-{dead}-0-abc"
    orphan.mkdir()
    (orphan / "trained_model.tar").write_bytes(b"x" * 1000)
    other = tmp_path / "test-outputs-notes"  # not one of ours: left alone
    other.mkdir()

    handoff = OutputHandoff("test-outputs-")
    assert not orphan.exists() and other.exists()
    first = handoff.next_folder()
    (first / "out.png").write_bytes(b"png")
    second = handoff.next_folder()
    assert not first.exists() and second.is_dir() and not list(second.iterdir())
    OutputHandoff("test-outputs-")  # a second live process of the same kind
    assert second.is_dir()
    handoff.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test-outputs-notes"]


def test_a_folder_of_a_dead_process_whose_pid_this_one_got_again_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mine = process_folder("test-work-")
    # This pid with another start time: a restarted container's worker often gets the pid
    # its killed predecessor had.
    earlier = tmp_path / f"test-work-{os.getpid()}-1-abc"
    earlier.mkdir()
    assert remove_orphans("test-work-") == [earlier] and mine.is_dir()
