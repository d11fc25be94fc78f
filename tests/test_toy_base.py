"""`BASE_MODEL=toy` loads like any base model and draws what the prompt asks for."""

import pytest

from tests.predict_helpers import one_torch_thread, predict_paths, tiny_predictor
from toyworld.recognition import follow_rates, held_out_prompts
from weights.base_models import resolve_model

CHANCE = 1 / 8  # eight palette colours


@pytest.fixture(scope="module")
def toy_predictor(model_cache):
    with one_torch_thread():
        yield tiny_predictor(model_cache, base_model="toy")


def test_toy_base_follows_the_prompted_background_colour(toy_predictor):
    prompted = held_out_prompts(8)
    with one_torch_thread():
        images = [
            predict_paths(
                toy_predictor,
                prompt=scene.caption,
                num_inference_steps=12,
                seed=index,
                disable_safety_checker=True,
            )[0]
            for index, scene in enumerate(prompted)
        ]
    from PIL import Image

    rates = follow_rates([Image.open(path).convert("RGB") for path in images], prompted)
    assert rates.background >= 4 * CHANCE, rates


def test_toy_base_has_no_refiner(model_cache):
    with pytest.raises(ValueError, match="REFINER_MODEL=tiny"):
        resolve_model("toy", "refiner", model_cache)
