"""predict(): every mode, scheduler and output option on the tiny models, and clear errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from imwatermark import WatermarkDecoder
from PIL import Image

from formats.tokens import apply_token_map
from generation.request import InvalidRequestError
from generation.safety import AllImagesFlaggedError, resolve_safety_checker
from generation.schedulers import SCHEDULERS
from serving.cli import declared_defaults
from tests.predict_helpers import (
    one_torch_thread,
    predict_arrays,
    predict_paths,
    same,
    tiny_predictor,
)
from weights.base_models import ModelUnavailableError


@pytest.fixture(scope="module")
def predictor(model_cache, tiny_models):
    with one_torch_thread():
        yield tiny_predictor(model_cache)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 64x64 RGB test image with structure (gradients and a square)."""
    y, x = np.mgrid[0:64, 0:64]
    pixels = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    pixels[16:48, 16:48] = [250, 30, 30]
    path = tmp_path_factory.mktemp("inputs") / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def half_mask(tmp_path_factory):
    """Left half black (keep), right half white (repaint); 32x32 so it must be resized."""
    pixels = np.zeros((32, 32), dtype=np.uint8)
    pixels[:, 16:] = 255
    path = tmp_path_factory.mktemp("inputs") / "mask.png"
    Image.fromarray(pixels).save(path)
    return path


def test_every_mode_returns_the_requested_size_and_count(predictor, photo, half_mask):
    for extra in ({}, {"image": photo, "mask": half_mask}):
        images = predict_arrays(predictor, width=96, height=64, num_outputs=2, **extra)
        assert [i.shape for i in images] == [(64, 96, 3)] * 2, extra


def test_img2img_keeps_the_input_size_rounded_to_8_as_replicate(predictor, tmp_path, capsys):
    odd = tmp_path / "odd.png"
    Image.new("RGB", (90, 70), (200, 40, 40)).save(odd)
    images = predict_arrays(predictor, image=odd, width=1024, height=1024, num_outputs=2)
    assert [i.shape for i in images] == [(64, 88, 3)] * 2
    assert (
        "The input image is 90x70: working at 88x64 (to multiples of 8)" in capsys.readouterr().out
    )


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_generates(predictor, scheduler):
    images = predict_arrays(predictor, scheduler=scheduler, num_inference_steps=2)
    assert images[0].shape == (64, 64, 3) and images[0].std() > 0


def test_same_seed_same_images_and_random_seeds_span_32_bits(predictor, capsys):
    first = predict_arrays(predictor, seed=1234, num_outputs=2)
    assert same(first, predict_arrays(predictor, seed=1234, num_outputs=2))
    assert not same(first, predict_arrays(predictor, seed=1235, num_outputs=2))
    assert not np.array_equal(first[0], first[1])  # one generator, distinct outputs

    capsys.readouterr()
    predict_paths(predictor, seed=None)
    seed = int(re.search(r"Using seed: (\d+)", capsys.readouterr().out).group(1))
    assert 0 <= seed < 2**32


def test_inpainting_keeps_black_masked_pixels(predictor, photo, half_mask):
    original = np.asarray(Image.open(photo))
    (painted,) = predict_arrays(predictor, image=photo, mask=half_mask, prompt_strength=1.0)
    np.testing.assert_array_equal(painted[:, :28], original[:, :28])  # far from the edge
    assert np.abs(painted[:, 36:].astype(int) - original[:, 36:]).mean() > 10


def test_img2img_at_strength_zero_returns_the_input(predictor, photo):
    (same_image,) = predict_arrays(predictor, image=photo, prompt_strength=0.0)
    np.testing.assert_array_equal(same_image, np.asarray(Image.open(photo)))
    (changed,) = predict_arrays(predictor, image=photo, prompt_strength=0.9)
    assert not np.array_equal(changed, same_image)


@pytest.mark.parametrize("refine", ["expert_ensemble_refiner", "base_image_refiner"])
def test_refiner_modes_run_and_change_the_image(predictor, photo, refine):
    plain = predict_arrays(predictor, num_inference_steps=2)
    refined = predict_arrays(predictor, num_inference_steps=2, refine=refine, refine_steps=1)
    assert refined[0].shape == plain[0].shape and not same(plain, refined)
    # img2img through the refiner too, with too few steps for a naive int(steps * strength)
    (img2img,) = predict_arrays(predictor, image=photo, refine=refine, prompt_strength=0.5)
    assert img2img.shape == (64, 64, 3)


def test_an_ensemble_split_with_an_empty_half_runs_the_base_alone(predictor, capsys):
    alone = predict_arrays(predictor, num_inference_steps=1)
    split = predict_arrays(predictor, num_inference_steps=1, refine="expert_ensemble_refiner")
    assert same(split, alone)
    assert "leaves the base or the refiner no step" in capsys.readouterr().out


def test_sizes_are_rounded_to_multiples_of_8_and_said_so(predictor, capsys):
    (image,) = predict_arrays(predictor, width=70, height=64)
    assert image.shape == (64, 64, 3)
    assert "width 70 is not a multiple of 8: using 64" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"mask": "MASK"}, "mask was given without an image"),
        ({"width": -64}, "width=-64: must be between 64 and 4096"),
        ({"height": 0}, "height=0: must be between 64 and 4096"),
        ({"scheduler": "EULER_FAST"}, "scheduler='EULER_FAST': use one of DDIM"),
        ({"image": "TEXT"}, "notes.txt is not an image in a format PIL reads"),
        ({"width": 4096, "height": 4096, "num_outputs": 4}, "megapixels"),
        ({"refine": "twice"}, "refine='twice': use one of no_refiner"),
        ({"seed": 2**53}, "seed=9007199254740992: must be between 0 and 9007199254740991"),
        ({"seed": -1}, "seed=-1: must be between 0 and 9007199254740991"),
        ({"loras": ["https://x/a.safetensors"]}, "loras must be a JSON object"),
        ({"loras": {"https://x/a.safetensors": 9}}, "must be a number between 0 and 4.0"),
    ],
)
def test_bad_inputs_give_clear_errors(predictor, half_mask, tmp_path, inputs, message):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    files = {"MASK": half_mask, "TEXT": text}
    inputs = {k: files.get(v, v) if isinstance(v, str) else v for k, v in inputs.items()}
    with pytest.raises(InvalidRequestError, match=re.escape(message)):
        predict_paths(predictor, **inputs)


@pytest.mark.parametrize(
    ("output_format", "pil_format"), [("png", "PNG"), ("webp", "WEBP"), ("jpg", "JPEG")]
)
def test_output_formats_unique_names_and_nothing_kept(predictor, output_format, pil_format):
    first = predict_paths(predictor, num_outputs=2, output_format=output_format, output_quality=90)
    assert all(Image.open(p).format == pil_format for p in first)
    second = predict_paths(predictor, num_outputs=2, output_format=output_format)
    names = [p.name for p in first + second]
    assert len(set(names)) == 4 and all(n.endswith(f".{output_format}") for n in names)
    # Cog has sent a request's files when the next one starts: they are deleted then.
    assert not any(p.exists() for p in first) and all(p.exists() for p in second)
    assert not first[0].parent.exists()


def _flag_above(predictor, threshold: float) -> None:
    """Set the safety checker's concept thresholds (cosine similarity above them flags)."""
    predictor.engine.safety_checker.model.concept_embeds_weights.fill_(threshold)


def _concept_scores(predictor, paths) -> list[float]:
    checker = predictor.engine.safety_checker
    import torch

    pixels = checker.processor([Image.open(p) for p in paths], return_tensors="pt").pixel_values
    pixels = pixels.to(checker.model.device, checker.model.dtype)
    with torch.no_grad():
        embeds = checker.model.visual_projection(checker.model.vision_model(pixels)[1])
        concepts = checker.model.concept_embeds
        cosine = torch.nn.functional.normalize(embeds) @ torch.nn.functional.normalize(concepts).T
    return cosine.max(dim=1).values.float().tolist()


def test_safety_checker_filters_flagged_images_and_says_so(predictor, capsys):
    try:
        reference = predict_paths(predictor, num_outputs=2, seed=11, disable_safety_checker=True)
        low, high = sorted(_concept_scores(predictor, reference))
        assert high - low > 0.01, "the two test images must score differently"
        _flag_above(predictor, (low + high) / 2)
        capsys.readouterr()
        kept = predict_paths(predictor, num_outputs=2, seed=11)
        assert len(kept) == 1
        assert "1 of 2 images were flagged as potentially NSFW" in capsys.readouterr().out

        _flag_above(predictor, -1.0)  # everything is flagged
        with pytest.raises(AllImagesFlaggedError, match="All 2 generated image"):
            predict_paths(predictor, num_outputs=2, seed=11)
        assert len(predict_paths(predictor, num_outputs=2, disable_safety_checker=True)) == 2
    finally:
        _flag_above(predictor, 1.0)


WATERMARK_BITS = [int(b) for b in bin(0b101100111110110010010000011110111011000110011110)[2:]]


def _has_sdxl_watermark(pixels: np.ndarray) -> bool:
    bgr = pixels[:, :, ::-1]
    bits = WatermarkDecoder("bits", len(WATERMARK_BITS)).decode(np.ascontiguousarray(bgr), "dwtDct")
    return sum(int(a == b) for a, b in zip(bits, WATERMARK_BITS, strict=True)) >= 44


def test_watermark_on_off_does_not_leak_into_the_next_request(predictor):
    big = dict(width=256, height=256, disable_safety_checker=True)
    (off,) = predict_arrays(predictor, apply_watermark=False, **big)
    (on,) = predict_arrays(predictor, apply_watermark=True, **big)
    assert _has_sdxl_watermark(on) and not _has_sdxl_watermark(off)
    with pytest.raises(InvalidRequestError):  # a failed request in between...
        predict_paths(predictor, apply_watermark=False, scheduler="nope", **big)
    (default,) = predict_arrays(predictor, **big)  # ...leaves the default (on) in force
    assert _has_sdxl_watermark(default)


@pytest.mark.parametrize("size", [(256, 64), (256, 248), (1024, 64), (64, 1024), (64, 64)])
def test_every_size_the_schema_accepts_gets_an_image_with_the_watermark_on(predictor, size):
    """The watermark encoder refuses images under 256x256 pixels: those pass unmarked."""
    width, height = size
    (image,) = predict_arrays(predictor, width=width, height=height, apply_watermark=True)
    assert image.shape == (height, width, 3)


def test_trigger_substitution_is_whole_word_and_case_exact():
    tokens = {"TOK": "<s0><s1>"}
    assert apply_token_map("a photo of TOK in tokyo", tokens) == "a photo of <s0><s1> in tokyo"
    assert apply_token_map("TOK, TOKYO and Tok.", tokens) == "<s0><s1>, TOKYO and Tok."


def test_inputs_match_replicates_sdxl_model():
    from cog import _inspector

    inputs = _inspector.create_predictor("predict", "Predictor").inputs
    expected = {
        "prompt": "An astronaut riding a rainbow unicorn",
        "negative_prompt": "",
        "width": 1024,
        "height": 1024,
        "num_outputs": 1,
        "scheduler": "K_EULER",
        "num_inference_steps": 50,
        "guidance_scale": 7.5,
        "prompt_strength": 0.8,
        "seed": None,
        "refine": "no_refiner",
        "high_noise_frac": 0.8,
        "refine_steps": None,
        "apply_watermark": True,
        "lora_scale": 0.6,
        "replicate_weights": None,
        "disable_safety_checker": False,
        "image": None,
        "mask": None,
        "output_format": "png",
    }
    assert {name: inputs[name].default for name in expected} == expected
    assert (inputs["num_outputs"].ge, inputs["num_outputs"].le) == (1, 4)
    assert (inputs["num_inference_steps"].ge, inputs["num_inference_steps"].le) == (1, 500)
    assert inputs["lora_scale"].le > 1
    assert set(inputs["scheduler"].choices) == set(SCHEDULERS)
    assert inputs["output_format"].choices == ["png", "webp", "jpg"]


def test_a_request_without_a_size_gets_replicates_1024(predictor):
    (path,) = predictor.predict(
        **{**declared_defaults(), "num_inference_steps": 1, "disable_safety_checker": True}
    )
    assert Image.open(path).size == (1024, 1024)


def test_unavailable_safety_checker_fails_fast_with_guidance(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="SAFETY_CHECKER_MODEL"):
        resolve_safety_checker("someone/no-such-checker", tmp_path)


def test_img2img_is_bounded_by_its_own_size_not_by_width_and_height(predictor, tmp_path, capsys):
    wide = tmp_path / "wide.png"
    Image.new("RGB", (5000, 64), (30, 90, 200)).save(wide)
    # 4096 x 4096 is over the pixel budget, but img2img does not use those sizes.
    images = predict_arrays(predictor, image=wide, width=4096, height=4096, num_outputs=1)
    assert images[0].shape == (64, 4096, 3)
    assert "working at 4096x64 (to fit the size limits)" in capsys.readouterr().out
