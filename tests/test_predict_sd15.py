"""predict() on an SD 1.5 base: the same engine and modes, the family's own defaults."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline
from PIL import Image

from families import SD15
from generation.request import GenerationRequest, InvalidRequestError
from tests.predict_helpers import one_torch_thread, predict_arrays, same, tiny_predictor
from tests.test_predict import half_mask, photo  # noqa: F401 (fixtures)

TINY_SD15 = SD15.tiny_model


@pytest.fixture(scope="module")
def predictor(model_cache, tiny_models, tiny_sd15_model):
    with one_torch_thread():
        yield tiny_predictor(model_cache, base_model=TINY_SD15)


def test_sd15_base_loads_sd15_pipelines_and_no_refiner(predictor):
    engine = predictor.engine
    assert engine.family.name == "sd15" and engine.refiner is None
    assert isinstance(engine.base.txt2img, StableDiffusionPipeline)
    assert isinstance(engine.base.inpaint, StableDiffusionInpaintPipeline)
    assert engine.base.inpaint.unet is engine.base.txt2img.unet  # shared, not copied
    assert set(engine.switcher.components) == {"unet", "text_encoder"}


def test_every_mode_runs_on_sd15_deterministically(predictor, photo, half_mask):  # noqa: F811
    for extra in ({}, {"image": photo}, {"image": photo, "mask": half_mask}):
        images = predict_arrays(predictor, width=96, height=64, num_outputs=2, **extra)
        size = (64, 64, 3) if "mask" not in extra and "image" in extra else (64, 96, 3)
        assert [i.shape for i in images] == [size] * 2, extra  # img2img: the input's size
        assert same(images, predict_arrays(predictor, width=96, height=64, num_outputs=2, **extra))

    original = np.asarray(Image.open(photo))
    (painted,) = predict_arrays(predictor, image=photo, mask=half_mask, prompt_strength=1.0)
    np.testing.assert_array_equal(painted[:, :28], original[:, :28])
    assert np.abs(painted[:, 36:].astype(int) - original[:, 36:]).mean() > 10


@pytest.mark.parametrize("refine", ["expert_ensemble_refiner", "base_image_refiner"])
def test_refiner_modes_say_sd15_has_no_refiner(predictor, refine):
    with pytest.raises(
        InvalidRequestError, match="SD 1.5 models have none: use refine='no_refiner'"
    ):
        predict_arrays(predictor, refine=refine)


def test_replicates_default_size_on_sd15_comes_with_advice(predictor, tmp_path, capsys):
    request = GenerationRequest(num_inference_steps=1, seed=3, disable_safety_checker=True)
    (path,) = predictor.engine.generate(request, tmp_path).paths
    assert Image.open(path).size == (1024, 1024)  # the schema's default, as on SDXL
    assert "SD 1.5 models draw best near 512x512" in capsys.readouterr().out
    predict_arrays(predictor, width=512, height=512, disable_safety_checker=True)
    assert "draw best" not in capsys.readouterr().out
