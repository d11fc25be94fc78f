"""The pieces of preprocessing that the trainer and predictor reuse or that have sharp edges:
trigger substitution, crop geometry, aspect buckets, early downscaling, upscaling."""

import numpy as np
import pytest
from PIL import Image
from preprocess_corpus import encode, photo
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    BlipForConditionalGeneration,
    Swin2SRForImageSuperResolution,
)

from formats.tokens import substitute_trigger
from preprocess.captioning import Captioner
from preprocess.crops import aspect_buckets, center_of_mass, closest_bucket, crop_box
from preprocess.images import load_image
from preprocess.model_loading import load_preprocessor, resolve_reference
from preprocess.preview import contact_sheet
from preprocess.upscale import Upscaler, resize_to
from weights.embedded.tiny_preprocessors import KINDS, ensure_tiny_preprocessor
from weights.runtime import pick_runtime

pytest_plugins = ["preprocess_fixtures"]  # tiny_settings, one_torch_thread
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a photo of TOK", "a photo of <s0><s1>"),
        ("TOK's hat in Tokyo", "<s0><s1>'s hat in Tokyo"),
        ("TOKYO, TOKEN, xTOK, TOK_2", "TOKYO, TOKEN, xTOK, TOK_2"),
        ("TOK,TOK.(TOK)", "<s0><s1>,<s0><s1>.(<s0><s1>)"),
        ("a Tok and a tok", "a Tok and a tok"),  # case-sensitive by default
        ("Ünïcode TOK-shaped", "Ünïcode <s0><s1>-shaped"),
    ],
)
def test_trigger_substitution_is_whole_word_and_case_preserving(text, expected):
    assert substitute_trigger(text, "TOK", "<s0><s1>") == expected


def test_trigger_substitution_can_ignore_case_and_takes_regex_characters_literally():
    assert substitute_trigger("a tok in tokyo", "TOK", "TOK", ignore_case=True) == "a TOK in tokyo"
    assert substitute_trigger("c++ and cxx", "c++", "<s0>") == "<s0> and cxx"


def test_salience_crop_follows_the_mask_and_stays_inside_the_image():
    mask = Image.new("L", (300, 100), 0)
    mask.paste(255, (250, 40, 270, 60))  # something salient near the right edge
    center = center_of_mass(mask)
    assert center == pytest.approx((260, 50), abs=1)
    assert crop_box((300, 100), (64, 64), center) == (200, 0, 300, 100)  # clamped to the edge
    assert crop_box((300, 100), (64, 64), (150, 50)) == (100, 0, 200, 100)
    assert crop_box((100, 300), (64, 64), (50, 0)) == (0, 0, 100, 100)


def test_buckets_have_about_the_target_area_and_portraits_get_portrait_buckets():
    buckets = aspect_buckets(1024)
    assert (1024, 1024) in buckets and (832, 1216) in buckets and (1216, 832) in buckets
    for width, height in buckets:
        assert width % 64 == 0 and height % 64 == 0
        assert 0.8 * 1024**2 <= width * height <= 1024**2
        assert max(width, height) / min(width, height) <= 2
    assert closest_bucket((3000, 4000), buckets) == (896, 1152)
    assert closest_bucket((4000, 3000), buckets) == (1152, 896)
    assert closest_bucket((1000, 1000), buckets) == (1024, 1024)


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(encode(photo(4000, 3000), "JPEG", quality=70))
    image = load_image(path, (512, 512))
    # 1/4 scale keeps both sides >= 512; the full 12-megapixel image is never decoded.
    assert image.size == (1000, 750)


def test_upscaler_runs_only_for_small_crops(model_cache):
    loaded = load_preprocessor(
        "tiny",
        "upscaler",
        Swin2SRForImageSuperResolution,
        AutoImageProcessor,
        pick_runtime("cpu"),
        model_cache,
        fallback="unused",
    )
    upscaler = Upscaler(loaded)
    small = photo(20, 20)
    assert upscaler.upscale(small).size == (80, 80)  # one x4 pass, padding cut off
    super_resolved = resize_to(small, (64, 64), upscaler)
    lanczos = resize_to(small, (64, 64), None)
    assert super_resolved.size == lanczos.size == (64, 64)
    assert not np.array_equal(np.asarray(super_resolved), np.asarray(lanczos))
    large = photo(100, 100)
    assert np.array_equal(
        np.asarray(resize_to(large, (64, 64), upscaler)),
        np.asarray(large.resize((64, 64), Image.Resampling.LANCZOS, reducing_gap=3.0)),
    )


def test_tiny_preprocessors_are_identical_on_every_build(tmp_path, model_cache):
    for kind in KINDS:
        first = ensure_tiny_preprocessor(kind, model_cache) / "model.safetensors"
        second = ensure_tiny_preprocessor(kind, tmp_path) / "model.safetensors"
        assert first.read_bytes() == second.read_bytes(), kind


def test_blip_captions_are_deterministic_and_independent_of_the_batch(model_cache):
    loaded = load_preprocessor(
        "tiny",
        "captioner",
        BlipForConditionalGeneration,
        AutoProcessor,
        pick_runtime("cpu"),
        model_cache,
        fallback="unused",
    )
    captioner = Captioner(loaded)
    photos = [photo(seed=seed) for seed in range(3)]
    batched = captioner.caption(photos)
    assert batched == captioner.caption(photos)
    assert [captioner.caption([p])[0] for p in photos] == batched
    assert all(batched) and len(set(batched)) == 3


def test_preview_dims_what_the_mask_leaves_out():
    crop = Image.new("RGB", (64, 64), (200, 200, 200))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))  # train on the right half only
    sheet = np.asarray(contact_sheet([(crop, mask, "a photo of TOK")]), float)
    left, right = sheet[100:150, 20:100].mean(), sheet[100:150, 160:240].mean()
    assert right == pytest.approx(200, abs=2) and left < 0.4 * right
    assert sheet[260:300].min() < 100  # the caption is written under the tile


def test_model_references_may_pin_a_revision(tmp_path):
    assert resolve_reference("org/model@0123abc", "segmenter", tmp_path) == ("org/model", "0123abc")
    assert resolve_reference("org/model", "segmenter", tmp_path) == ("org/model", None)
    folder = tmp_path / "weights@v2"
    folder.mkdir()
    assert resolve_reference(str(folder), "segmenter", tmp_path) == (folder, None)
