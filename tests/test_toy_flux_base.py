"""`BASE_MODEL=toy-flux`: assembled byte for byte from the shipped files, served by the FLUX.1
predictor, drawing what the prompt asks for; and its pretraining is reproducible from seed."""

import hashlib
from pathlib import Path

import pytest

from predict_flux import Predictor as FluxPredictor
from serving.cli import declared_defaults
from serving.containers import CONTAINERS
from tests.predict_helpers import flux_predictor_on, held_out_follow_rates, one_torch_thread
from toyworld.pretrain import PretrainConfig
from toyworld.pretrain_flux import TOY_FLUX_SIZE, pretrain_toy_flux
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


@pytest.fixture(scope="module")
def toy_flux_predictor(model_cache) -> FluxPredictor:
    return flux_predictor_on(model_cache, TOY_FLUX)


def test_toy_flux_follows_the_prompted_background_colour(toy_flux_predictor):
    defaults = declared_defaults(CONTAINERS["flux"].predictor)  # guidance 3.5: the predictor's
    size = dict(aspect_ratio="custom", width=TOY_FLUX_SIZE, height=TOY_FLUX_SIZE)
    rates = held_out_follow_rates(
        lambda **inputs: toy_flux_predictor.predict(
            **{**defaults, **size, "num_inference_steps": 20, "output_format": "png"},
            disable_safety_checker=True,
            **inputs,
        )[0]
    )
    # A model that ignores the prompt hits 1/8 (tiny-flux: 0.06); at least 5 of 16 (2.5x
    # chance, as the toy SDXL's test) happens by chance with probability 0.04.
    assert rates.background >= 2.5 * CHANCE, rates


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
