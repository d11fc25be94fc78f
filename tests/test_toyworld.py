"""The toy world's scenes, subject, style and pixel metrics agree with what was drawn."""

import zipfile

import numpy as np
from PIL import Image, ImageDraw

from toyworld import metrics
from toyworld.scenes import render, scenes
from toyworld.style import style_images, write_style_zip
from toyworld.subject import EMBLEM_COLOURS, subject_images, write_subject_zip


def test_scenes_are_deterministic_and_captioned_by_the_grammar():
    first, again, other = scenes(20, seed=1), scenes(20, seed=1), scenes(20, seed=2)
    assert first == again and first != other
    assert np.array_equal(np.asarray(render(first[0])), np.asarray(render(again[0])))
    assert first[0].caption.startswith(("a ", "an "))
    assert all(s.caption.endswith(f"{s.background_colour} background") for s in first)


def test_metrics_read_back_what_the_renderer_drew():
    drawn = scenes(60, seed=3)
    images = [render(s) for s in drawn]
    background_hits = [
        metrics.background_colour(i) == s.background_colour
        for i, s in zip(images, drawn, strict=True)
    ]
    object_hits = [metrics.object_colour(i) == s.colour for i, s in zip(images, drawn, strict=True)]
    assert np.mean(background_hits) >= 0.95
    assert np.mean(object_hits) >= 0.9
    readable = [
        (i, s) for i, s in zip(images, drawn, strict=True) if s.background_colour != "white"
    ]
    assert all(metrics.background_pattern(i) == s.background for i, s in readable)
    assert not any(metrics.subject_present(i) for i in images)
    assert metrics.drift(images[0], images[0]) == 0.0 < metrics.drift(images[0], images[1])


def test_subject_is_detected_in_its_photos_and_packed_like_a_users_zip(tmp_path):
    photos = subject_images(8, seed=0)
    assert all(metrics.subject_present(image) for image, _ in photos)
    assert all(metrics.emblem_quartered(image) for image, _ in photos)
    halves = Image.new("RGB", (64, 64), (40, 80, 220))  # both colours, in halves, not quarters
    draw = ImageDraw.Draw(halves)
    draw.rectangle([8, 8, 31, 55], fill=EMBLEM_COLOURS[0])
    draw.rectangle([32, 8, 55, 55], fill=EMBLEM_COLOURS[1])
    assert metrics.subject_present(halves) and not metrics.emblem_quartered(halves)
    assert all("TOK" in caption for _, caption in photos)

    first = write_subject_zip(tmp_path / "a.zip").read_bytes()
    assert write_subject_zip(tmp_path / "b.zip").read_bytes() == first
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        assert len([n for n in archive.namelist() if n.endswith(".png")]) == 8
        assert "caption.csv" in archive.namelist()


def test_the_dusk_style_is_read_under_any_scene_and_never_in_plain_ones(tmp_path):
    drawn = scenes(40, seed=0)
    photos = style_images(40, seed=0)
    assert [caption for _, caption in photos] == [f"{s.caption} in the style of TOK" for s in drawn]
    pairs = [(image, s, render(s)) for (image, _), s in zip(photos, drawn, strict=True)]
    assert all(
        metrics.at_dusk(image, plain) for image, s, plain in pairs if s.background_colour != "black"
    )
    assert not any(metrics.at_dusk(plain, plain) for _, _, plain in pairs)
    for image, s, plain in pairs:  # the scene's colours can still be read, at dusk or not
        assert (
            metrics.tone_colours(image)[0] == metrics.tone_colours(plain)[0] == s.background_colour
        )
    objects = [metrics.tone_colours(image)[1] == s.colour for image, s, _ in pairs]
    assert np.mean(objects) >= 0.9

    first = write_style_zip(tmp_path / "a.zip").read_bytes()
    assert write_style_zip(tmp_path / "b.zip").read_bytes() == first
