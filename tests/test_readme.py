"""The README's shell blocks, run as written in a user's folder on the tiny profile: the CLI,
the HTTP sequence (two real Cog servers and the client), and the FLUX.1 container."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

from PIL import Image

from formats.bundle import LORA_FILE, LORA_KOHYA_FILE, SPECIAL_PARAMS_FILE
from weights.settings import MODEL_VARIABLES

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- tests/test_readme.py runs this block -->"
# Shell blocks no test here can run: the set-up commands (CI runs `make test` itself) and
# `cog build` / `cog push` (Docker and a registry).
UNRUN = ("make demo", "cog build")
NOISE = ("Failed to load", "Enum subclass", "requires torchvision", "is deprecated")


def readme_blocks() -> tuple[list[str], list[str]]:
    """(the marked shell blocks, the unmarked ones)."""
    readme = (ROOT / "README.md").read_text()
    marked = re.findall(re.escape(MARKER) + r"\n```bash\n(.*?)```", readme, re.S)
    every = re.findall(r"```bash\n(.*?)```", readme, re.S)
    return marked, [block for block in every if block not in marked]


def run_block(block: str, folder: Path, model_cache: Path) -> subprocess.CompletedProcess:
    """A README block in a user's folder holding their photos and the project's environment as
    `make setup` leaves it, on the tiny profile (nothing downloaded, the tiny defaults)."""
    shutil.copy(ROOT / "examples" / "cat_photos.zip", folder / "my-photos.zip")
    (folder / ".venv").symlink_to(sys.prefix)
    env = {k: v for k, v in os.environ.items() if k not in MODEL_VARIABLES}
    # No PYTHONPATH: the commands find the project through the virtualenv, as a user's do.
    env.pop("PYTHONPATH", None)
    env.update(SDXL_TUNER_PROFILE="tiny", SDXL_TUNER_CACHE=str(model_cache), OMP_NUM_THREADS="1")
    shell = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its background servers go with it
    )
    try:
        stdout, stderr = shell.communicate(timeout=900)
    finally:
        try:
            os.killpg(shell.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done = subprocess.CompletedProcess(shell.args, shell.returncode, stdout, stderr)
    logs = "".join(p.read_text()[-2000:] for p in folder.glob("*.log"))
    assert done.returncode == 0, done.stderr[-3000:] + logs
    # Libraries' import-time warnings stay out of what the user sees (weights/quiet.py).
    for noise in NOISE:
        assert noise not in done.stdout + done.stderr, noise
    return done


def test_every_shell_block_of_the_readme_is_run_here_but_setup_and_docker():
    marked, unmarked = readme_blocks()
    assert len(marked) == 3
    assert [next(u for u in UNRUN if u in block) for block in unmarked] == list(UNRUN)


def test_the_readmes_own_photos_commands_run_on_the_tiny_profile(tmp_path, model_cache):
    done = run_block(readme_blocks()[0][0], tmp_path, model_cache)
    with tarfile.open(tmp_path / "my-weights.tar") as tar:
        assert {LORA_FILE, SPECIAL_PARAMS_FILE} <= set(tar.getnames())
    # The tiny profile's defaults: 64x64 images (num_outputs=2 as the block asks).
    assert [Image.open(tmp_path / f"output.{i}.png").size for i in (0, 1)] == [(64, 64)] * 2
    assert "Trained tokens for TOK in the prompt." in done.stdout + done.stderr


def test_the_readmes_http_sequence_runs_against_real_servers(tmp_path, model_cache):
    done = run_block(readme_blocks()[0][1], tmp_path, model_cache)
    with tarfile.open(tmp_path / "my-weights.tar") as tar:
        assert {LORA_FILE, SPECIAL_PARAMS_FILE} <= set(tar.getnames())
    assert Image.open(tmp_path / "output.0.png").size == (64, 64)
    assert "Written output to output.0.png" in done.stdout


def test_the_readmes_flux_commands_run_on_the_tiny_flux(tmp_path, model_cache):
    run_block(readme_blocks()[0][2], tmp_path, model_cache)
    with tarfile.open(tmp_path / "my-flux-weights.tar") as tar:
        assert {LORA_FILE, LORA_KOHYA_FILE} <= set(tar.getnames())
    assert Image.open(tmp_path / "output.0.webp").size == (256, 256)
