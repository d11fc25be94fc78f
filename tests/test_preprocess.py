"""The preprocessing pipeline end to end, on hostile and awkward uploads, with the tiny BLIP,
CLIPSeg and Swin2SR models and OpenCV's real face detector, at 64x64."""

import csv
import logging
import os

import numpy as np
import pytest
from PIL import Image
from preprocess_corpus import (
    BLUE,
    CLUTTER,
    GREEN,
    NOT_IMAGES,
    RED,
    cmyk_jpeg,
    corrupt_zip,
    encode,
    exif_rotated_jpeg,
    face_photo,
    gif_two_frames,
    photo,
    png_16bit,
    png_declaring,
    rgba_png,
    tar_with_symlink,
    truncated_jpeg,
    two_faces_photo,
    write_file,
    write_folder,
    write_tar,
    write_zip,
    zip_bomb,
    zip_with_symlink,
)
from skimage.measure import label

from preprocess import PreprocessConfig, PreprocessError, preprocess
from weights.settings import ModelSettings

RESOLUTION = 64

pytest_plugins = ["preprocess_fixtures"]  # tiny_settings, one_torch_thread
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def run(tmp_path, tiny_settings):
    def run(input_path, **options):
        config = PreprocessConfig(
            input_path=input_path,
            output_dir=tmp_path / "dataset",
            resolution=options.pop("resolution", RESOLUTION),
            settings=options.pop("settings", tiny_settings),
            **options,
        )
        return preprocess(config)

    return run


def read_rows(dataset):
    with open(dataset.captions_csv, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def by_source(dataset):
    return {image.source: image for image in dataset.images}


def pixel(path, x_fraction, y_fraction):
    image = Image.open(path)
    return np.asarray(image)[int(y_fraction * image.height), int(x_fraction * image.width)]


def close_to(value, expected, tolerance=40):
    return np.abs(np.asarray(value, float) - np.asarray(expected, float)).max() <= tolerance


def test_awkward_upload_keeps_every_usable_photo_and_reports_the_rest(tmp_path, run, caplog):
    good = encode(photo(seed=1), "JPEG")
    upload = write_zip(
        tmp_path / "upload.zip",
        {
            "trip/a/IMG_0001.jpg": good,
            "trip/b/IMG_0001.jpg": encode(photo(seed=2), "JPEG"),  # same name, other folder
            "trip/Фото 1.jpg": encode(photo(seed=3), "JPEG"),
            "trip/my photo (2).png": encode(photo(seed=4), "PNG"),
            "trip/rotated.jpg": exif_rotated_jpeg(),
            "trip/cmyk.jpg": cmyk_jpeg(),
            "trip/deep.png": png_16bit(),
            "trip/alpha.png": rgba_png(),
            "trip/anim.gif": gif_two_frames(),
            "trip/photo.webp": encode(photo(seed=5), "WEBP"),
            "trip/named-as-text.txt.jpg.bmp": encode(photo(seed=6), "BMP"),
            "trip/no-extension": encode(photo(seed=8), "TIFF"),  # recognised by content
            "trip/broken.jpg": truncated_jpeg(),
            "trip/huge.png": png_declaring(20_000, 20_000),
            "trip/big.png": png_declaring(12_000, 10_000),
            **{f"trip/{name}": payload for name, payload in NOT_IMAGES.items()},
            **CLUTTER,
        },
    )
    with caplog.at_level(logging.INFO):
        dataset = run(upload)

    used = by_source(dataset)
    assert sorted(used) == sorted(
        f"trip/{name}"
        for name in (
            "a/IMG_0001.jpg",
            "b/IMG_0001.jpg",
            "Фото 1.jpg",
            "my photo (2).png",
            "rotated.jpg",
            "cmyk.jpg",
            "deep.png",
            "alpha.png",
            "anim.gif",
            "photo.webp",
            "named-as-text.txt.jpg.bmp",
            "no-extension",
        )
    )
    skipped = dict(dataset.skipped)
    assert sorted(skipped) == sorted(
        [f"trip/{n}" for n in ("broken.jpg", "huge.png", "big.png", *NOT_IMAGES)]
    )
    assert "truncated" in skipped["trip/broken.jpg"]
    assert "decompression bomb" in skipped["trip/huge.png"]
    assert "12000x10000" in skipped["trip/big.png"]
    assert "HEIC" in skipped["trip/IMG_0002.HEIC"]
    assert skipped["trip/notes.pdf"] == "not an image"
    assert "12 images used, 6 skipped" in caplog.text

    # Same-named photos stay distinct; every output is a 64x64 RGB crop with an L mask.
    assert len({image.image_path for image in dataset.images}) == 12
    for image in dataset.images:
        assert Image.open(image.image_path).mode == "RGB"
        assert Image.open(image.image_path).size == (RESOLUTION, RESOLUTION)
        assert Image.open(image.mask_path).mode == "L"
        assert Image.open(image.mask_path).size == (RESOLUTION, RESOLUTION)
        assert image.caption.startswith("a photo of TOK,")

    # Normalisation: upright, RGB from CMYK, 16-bit scaled, alpha on grey, first GIF frame.
    rotated = used["trip/rotated.jpg"].image_path
    assert close_to(pixel(rotated, 0.5, 0.1), RED) and close_to(pixel(rotated, 0.5, 0.9), BLUE)
    assert close_to(pixel(used["trip/cmyk.jpg"].image_path, 0.5, 0.5), (255, 0, 0), 60)
    assert close_to(pixel(used["trip/deep.png"].image_path, 0.5, 0.5), (128, 128, 128), 3)
    alpha = used["trip/alpha.png"].image_path
    assert close_to(pixel(alpha, 0.1, 0.5), GREEN, 10)
    assert close_to(pixel(alpha, 0.9, 0.5), (128, 128, 128), 3)
    assert close_to(pixel(used["trip/anim.gif"].image_path, 0.5, 0.5), BLUE, 10)

    rows = read_rows(dataset)
    assert [r["image_path"] for r in rows] == [i.image_path.name for i in dataset.images]
    assert [r["caption"] for r in rows] == [i.caption for i in dataset.images]
    assert Image.open(dataset.preview).size[0] >= 256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "upload.zip"]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda p: write_zip(p, {"../evil.jpg": encode(photo(), "JPEG")}), "outside the archive"),
        (lambda p: write_zip(p, {"/etc/evil.jpg": encode(photo(), "JPEG")}), "absolute path"),
        (zip_with_symlink, "link or special file"),
        (tar_with_symlink, "link or special file"),
        (zip_bomb, "would unpack to 7680 MiB"),
        (corrupt_zip, "corrupt"),
        (lambda p: write_zip(p, {}), "contains no files"),
        (lambda p: write_zip(p, {**NOT_IMAGES, **CLUTTER}), "no usable image .3 files skipped"),
        (lambda p: write_tar(p, {"a/bad.jpg": truncated_jpeg()}), "bad.jpg: truncated"),
        (lambda p: write_file(p, b"just some text"), "not a zip or tar archive"),
        (lambda p: write_file(p, b""), "is empty"),
    ],
    ids=[
        "zip-slip",
        "absolute-path",
        "zip-symlink",
        "tar-symlink",
        "zip-bomb",
        "corrupt-zip",
        "empty-archive",
        "only-non-images",
        "only-broken-images",
        "not-an-archive",
        "empty-file",
    ],
)
def test_hostile_or_useless_uploads_fail_clearly_and_leave_nothing(tmp_path, run, build, message):
    upload = build(tmp_path / "upload.bin")
    with pytest.raises(PreprocessError, match=message):
        run(upload)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload.bin"]


def test_filetype_is_checked_against_the_content(tmp_path, run):
    upload = write_tar(tmp_path / "photos.zip", {"a.jpg": encode(photo(), "JPEG")})
    with pytest.raises(PreprocessError, match="is a tar archive, not a zip"):
        run(upload, input_images_filetype="zip")
    assert len(run(upload, input_images_filetype="tar").images) == 1


def test_caption_files_take_precedence_and_mismatches_are_listed(tmp_path, run, caplog):
    folder = write_folder(
        tmp_path / "photos",
        {
            "dog1.jpg": encode(photo(seed=1), "JPEG"),
            "dog2.jpg": encode(photo(seed=2), "JPEG"),
            "dog3.jpg": encode(photo(seed=3), "JPEG"),
            "more/dog4.png": encode(photo(seed=4), "PNG"),
            "a/x.jpg": encode(photo(seed=5), "JPEG"),
            "b/x.jpg": encode(photo(seed=6), "JPEG"),
            "dog2.txt": b"TOK sleeping, from the sidecar",
            "more/dog4.txt": b"a sidecar without the trigger",
            "caption.csv": (
                b"image_file,caption\n"
                b'dog1.jpg,"TOK on the beach, from the csv"\n'
                b"dog2.jpg,TOK in the csv wins over the sidecar\n"
                b"missing.jpg,TOK nowhere to be seen\n"
                b"a/x.jpg,TOK in folder a\n"
                b"x.jpg,TOK in which folder?\n"
            ),
        },
    )
    with caplog.at_level(logging.WARNING):
        dataset = run(folder)

    captions = {image.source: image.caption for image in dataset.images}
    assert captions["dog1.jpg"] == "TOK on the beach, from the csv"
    assert captions["dog2.jpg"] == "TOK in the csv wins over the sidecar"
    assert captions["more/dog4.png"] == "TOK, a sidecar without the trigger"
    assert captions["a/x.jpg"] == "TOK in folder a"  # a path picks one of two x.jpg
    assert captions["b/x.jpg"].startswith("a photo of TOK, ")  # a bare x.jpg is ambiguous
    assert captions["dog3.jpg"].startswith("a photo of TOK, ")  # BLIP after the prefix
    assert len(captions["dog3.jpg"]) > len("a photo of TOK, ")
    assert dataset.skipped == []  # caption files are data, not skipped files
    assert "caption.csv names images that are not in the upload" in caplog.text
    assert "missing.jpg, x.jpg" in caplog.text
    assert "no caption in caption.csv or a .txt file" in caplog.text
    assert "dog3.jpg" in caplog.text.split("no caption in caption.csv")[1]


def test_caption_prefix_without_the_trigger_gets_it(tmp_path, run, caplog):
    upload = write_zip(tmp_path / "u.zip", {"a.jpg": encode(photo(), "JPEG")})
    with caplog.at_level(logging.WARNING):
        dataset = run(upload, caption_prefix="in the style of ", token_string="SKS")
    assert dataset.images[0].caption.startswith("SKS, in the style of ")
    assert "does not contain the trigger 'SKS'" in caplog.text


def test_without_model_weights_the_pipeline_falls_back(tmp_path, run, tiny_settings, caplog):
    missing = str(tmp_path / "no-such-model")
    settings = ModelSettings(
        **{
            **tiny_settings.__dict__,
            "caption_model": missing,
            "mask_model": missing,
            "upscaler_model": missing,
        }
    )
    upload = write_zip(tmp_path / "u.zip", {"small.jpg": encode(photo(40, 30), "JPEG")})
    with caplog.at_level(logging.WARNING):
        dataset = run(upload, settings=settings, mask_target_prompts="a dog")
    image = dataset.images[0]
    assert image.caption == "a photo of TOK"  # the prefix alone, without its comma
    assert np.asarray(Image.open(image.mask_path)).min() == 255
    assert Image.open(image.image_path).size == (RESOLUTION, RESOLUTION)
    for fallback in ("caption prefix alone", "whole image", "Lanczos"):
        assert fallback in caplog.text


def test_clipseg_masks_follow_the_prompt_and_temperature(tmp_path, run):
    upload = write_zip(tmp_path / "u.zip", {"a.jpg": encode(photo(120, 90, seed=3), "JPEG")})
    sharp = run(upload, mask_target_prompts="a red ball", clipseg_temperature=0.3)
    sharp_mask = np.asarray(Image.open(sharp.images[0].mask_path), float)
    os.rename(sharp.folder, tmp_path / "sharp")
    blurry = run(upload, mask_target_prompts="a red ball", clipseg_temperature=3.0)
    blurry_mask = np.asarray(Image.open(blurry.images[0].mask_path), float)
    assert sharp_mask.min() < sharp_mask.max()  # a prompt mask, not the whole image
    assert sharp_mask.std() > blurry_mask.std()


def test_two_faces_make_one_mask_for_the_right_image(tmp_path, run):
    upload = write_zip(
        tmp_path / "u.zip",
        {
            "1-two-faces.png": encode(two_faces_photo(), "PNG"),
            "2-no-face.jpg": encode(photo(200, 150), "JPEG"),
            "3-one-face.jpg": encode(face_photo(), "JPEG"),
        },
    )
    # Buckets keep the wide two-face photo wide, so both faces stay in the crop.
    dataset = run(upload, use_face_detection_instead=True, aspect_buckets=True)
    names = [i.source for i in dataset.images]
    assert names == ["1-two-faces.png", "2-no-face.jpg", "3-one-face.jpg"]
    masks = [np.asarray(Image.open(i.mask_path)) for i in dataset.images]
    blobs = label(masks[0] > 128)
    assert blobs.max() == 2  # both faces, in one mask
    centres = sorted(np.argwhere(blobs == n)[:, 1].mean() / masks[0].shape[1] for n in (1, 2))
    assert centres[0] < 0.4 and centres[1] > 0.6
    assert masks[1].min() == 255  # no face: the whole image
    assert label(masks[2] > 128).max() == 1 and masks[2].min() < 50


def test_face_crop_centres_on_the_face(tmp_path, run):
    face = face_photo()  # the face is in the upper left quarter
    wide = Image.new("RGB", (1536, 512), (200, 200, 200))
    wide.paste(face, (1024, 0))
    upload = write_zip(tmp_path / "u.zip", {"wide.png": encode(wide, "PNG")})
    dataset = run(upload, crop_based_on_salience=False)
    crop = np.asarray(Image.open(dataset.images[0].image_path), float)
    assert crop.std() > 20  # the photo, not the flat grey left part


def test_aspect_buckets_keep_portraits_portrait(tmp_path, run):
    upload = write_zip(
        tmp_path / "u.zip",
        {"portrait.jpg": encode(photo(90, 180), "JPEG"), "square.jpg": encode(photo(), "JPEG")},
    )
    dataset = run(upload, aspect_buckets=True)
    sizes = {i.source: Image.open(i.image_path).size for i in dataset.images}
    width, height = sizes["portrait.jpg"]
    assert height > width and abs(width * height - RESOLUTION**2) <= 0.2 * RESOLUTION**2
    mask_sizes = {i.source: Image.open(i.mask_path).size for i in dataset.images}
    assert mask_sizes == sizes


def test_output_folder_must_be_new_or_empty(tmp_path, run):
    upload = write_zip(tmp_path / "u.zip", {"a.jpg": encode(photo(), "JPEG")})
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "old.txt").write_text("keep me")
    with pytest.raises(PreprocessError, match="not an empty folder"):
        run(upload)
    assert (tmp_path / "dataset" / "old.txt").read_text() == "keep me"
    (tmp_path / "dataset" / "old.txt").unlink()
    assert len(run(upload).images) == 1


def test_local_folder_ignores_symlinks(tmp_path, run):
    folder = write_folder(tmp_path / "photos", {"a.jpg": encode(photo(), "JPEG")})
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(encode(photo(seed=9), "JPEG"))
    (folder / "link.jpg").symlink_to(secret)
    dataset = run(folder)
    assert [i.source for i in dataset.images] == ["a.jpg"]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"clipseg_temperature": 0.0}, "clipseg_temperature must be positive"),
        ({"token_string": " "}, "token_string must not be empty"),
        ({"input_images_filetype": "rar"}, "input_images_filetype=.rar.: use one of"),
        ({"resolution": 4}, "resolution must be at least"),
    ],
)
def test_bad_settings_are_refused_before_any_work(tmp_path, run, options, message):
    upload = write_zip(tmp_path / "u.zip", {"a.jpg": encode(photo(), "JPEG")})
    with pytest.raises(PreprocessError, match=message):
        run(upload, **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.zip"]


def test_a_caption_csv_matching_nothing_is_reported(tmp_path, run, caplog):
    csv_text = b"image_file,caption\nIMG_1.jpeg,TOK at home\n"
    upload = write_zip(
        tmp_path / "u.zip", {"IMG_1.jpg": encode(photo(), "JPEG"), "caption.csv": csv_text}
    )
    with caplog.at_level(logging.WARNING):
        dataset = run(upload)
    assert dataset.images[0].caption.startswith("a photo of TOK, ")
    assert "not in the upload (or have empty captions): IMG_1.jpeg" in caplog.text
    assert "captioned automatically: IMG_1.jpg" in caplog.text
