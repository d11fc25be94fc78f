"""Output folders handed to Cog: one call's at a time, and none left by a killed process."""

import subprocess
import sys
import tempfile

from serving.handoff import OutputHandoff


def test_each_call_deletes_the_previous_outputs_and_a_dead_processes_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    orphan = tmp_path / f"test-outputs-{dead}-abc"
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
