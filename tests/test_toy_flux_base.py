"""`BASE_MODEL=toy-flux`: assembled byte for byte from the shipped files, and its pretraining
is reproducible from seed. (It does not yet draw the prompted colours well above chance:
toyworld/README.md.)"""

import hashlib
from pathlib import Path

from tests.predict_helpers import one_torch_thread
from toyworld.pretrain import PretrainConfig
from toyworld.pretrain_flux import pretrain_toy_flux
from weights.base_models import resolve_model
from weights.embedded.toy_flux import TRANSFORMER
from weights.settings import TOY_FLUX

CHANCE = 1 / 8  # eight palette colours


def file_digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_toy_flux_folder_is_rebuilt_byte_for_byte(tmp_path):
    with one_torch_thread():
        first = resolve_model(TOY_FLUX, "base", tmp_path / "first")
        second = resolve_model(TOY_FLUX, "base", tmp_path / "second")
    assert first.name == second.name and first.name.startswith("toy-flux-base-")
    digests = file_digests(first)
    assert f"{TRANSFORMER}/diffusion_pytorch_model.safetensors" in digests
    assert digests == file_digests(second)


def test_toy_flux_pretraining_is_reproducible_from_seed(tmp_path):
    """A few steps from seed 0, twice: the same transformer, byte for byte."""
    config = PretrainConfig(unet_images=4, flux_steps=2, flux_batch_size=2, flux_save_every=2)
    written = []
    with one_torch_thread():
        for run in ("a", "b"):
            pretrain_toy_flux(config, tmp_path / run / "work", tmp_path / run / "weights")
            written.append(file_digests(tmp_path / run / "weights"))
    assert f"{TRANSFORMER}/diffusion_pytorch_model.safetensors" in written[0]
    assert written[0] == written[1]
