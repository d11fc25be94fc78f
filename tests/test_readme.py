"""The README's own-photos sequence, run as written on the tiny profile."""

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from PIL import Image

from formats.bundle import LORA_FILE, LORA_KOHYA_FILE, SPECIAL_PARAMS_FILE
from weights.settings import MODEL_VARIABLES

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- tests/test_readme.py runs this block -->"
FLUX_MARKER = "<!-- tests/test_readme.py runs this FLUX.1 block -->"


def run_block(marker: str, folder: Path, model_cache: Path) -> subprocess.CompletedProcess:
    """The README's bash block after `marker`, run in a user's folder holding their photos and
    the project's environment as `make setup` makes it."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(re.escape(marker) + r"\n```bash\n(.*?)```", readme, re.S).group(1)
    assert "SDXL_TUNER_PROFILE=tiny" in block and "my-photos.zip" in block
    shutil.copy(ROOT / "examples" / "cat_photos.zip", folder / "my-photos.zip")
    (folder / ".venv").symlink_to(sys.prefix)
    env = {k: v for k, v in os.environ.items() if k not in MODEL_VARIABLES}
    # No PYTHONPATH: the commands run in the user's folder as `make setup` leaves the venv.
    env.update(SDXL_TUNER_CACHE=str(model_cache), OMP_NUM_THREADS="1")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Libraries' import-time warnings stay out of what the user sees (weights/quiet.py).
    for noise in ("Failed to load", "Enum subclass", "requires torchvision", "is deprecated"):
        assert noise not in done.stdout + done.stderr, noise
    return done


def test_the_readmes_own_photos_commands_run_on_the_tiny_profile(tmp_path, model_cache):
    done = run_block(MARKER, tmp_path, model_cache)
    with tarfile.open(tmp_path / "my-weights.tar") as tar:
        assert {LORA_FILE, SPECIAL_PARAMS_FILE} <= set(tar.getnames())
    assert Image.open(tmp_path / "output.0.png").size == (64, 64)
    assert "Trained tokens for TOK in the prompt." in done.stdout + done.stderr


def test_the_readmes_flux_commands_run_on_the_tiny_flux(tmp_path, model_cache):
    run_block(FLUX_MARKER, tmp_path, model_cache)
    with tarfile.open(tmp_path / "my-flux-weights.tar") as tar:
        assert {LORA_FILE, LORA_KOHYA_FILE} <= set(tar.getnames())
    assert Image.open(tmp_path / "output.0.webp").size == (256, 256)
