"""`BASE_MODEL=toy` loads like any base model and draws what the prompt asks for."""

import pytest

from tests.predict_helpers import (
    held_out_follow_rates,
    one_torch_thread,
    predict_paths,
    tiny_predictor,
)
from weights.base_models import resolve_model

CHANCE = 1 / 8  # eight palette colours; the untrained tiny model scores about 0.06


def test_toy_base_follows_the_prompted_background_colour(model_cache):
    with one_torch_thread():
        predictor = tiny_predictor(model_cache, base_model="toy")
    rates = held_out_follow_rates(
        lambda **inputs: predict_paths(
            predictor, num_inference_steps=20, disable_safety_checker=True, **inputs
        )[0]
    )
    # Measured here: 7 of 16 (0.44); at least 5 of 16 is well clear of chance (2 of 16).
    assert rates.background >= 2.5 * CHANCE, rates


def test_toy_base_has_no_refiner(model_cache):
    with pytest.raises(ValueError, match="REFINER_MODEL=tiny"):
        resolve_model("toy", "refiner", model_cache)
