"""The Cog `train()` end to end: the example zip in, a weights tarball out (a top-level
cog.Path), the dry run, and invalid inputs rejected before any work."""

import base64
import io
import json
import math
import tarfile
import zipfile

import pytest
import torch
from cog import Path as CogPath
from PIL import Image
from safetensors.torch import load

from families import FLUX, SD15, SDXL
from formats.bundle import (
    CHECKPOINTS_DIR,
    EMBEDDINGS_PTI_FILE,
    LORA_FILE,
    MODEL_CARD_FILE,
    PREVIEW_FILE,
    SPECIAL_PARAMS_FILE,
    TRAINING_CONFIG_FILE,
)
from formats.progress import read_progress
from preprocess import PreprocessError
from serving.cli import parse_inputs
from serving.containers import CONTAINERS, load_entry
from serving.schema import TRAINER_REF, inspect_entry
from tests.conftest import ROOT
from tests.train_helpers import one_thread  # noqa: F401 (autouse fixture)
from tests.trained_bundles import tar_bytes
from training.bundle import base_model_loading, bundle_size_report
from training.config import LEARNING_INPUTS, PRESETS, InvalidTrainingConfig, TrainingConfig
from weights.archive import unpack_archive
from weights.settings import TINY
from weights.trained_files import inspect_weights

TINY_SD15 = SD15.tiny_model
TINY_FLUX = FLUX.tiny_model

EXAMPLE = "@examples/cat_photos.zip"


def image_bytes(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def train_with(trainer: str = TRAINER_REF, **inputs):
    """Call a container's train() (`file.py:name`) as Cog does: the declared defaults for
    every input not given."""
    train = load_entry(trainer)
    pairs = [f"{name}={value}" for name, value in {"input_images": EXAMPLE, **inputs}.items()]
    return train(**parse_inputs(pairs, None, inspect_entry(trainer)))


@pytest.mark.parametrize("base_model, family", [(TINY, SDXL), (TINY_SD15, SD15)])
def test_train_turns_the_example_zip_into_a_bundle(tiny_env, tmp_path, base_model, family):
    bundle = train_with(base_model=base_model, seed=0, resolution=64, train_batch_size=2,
                        max_train_steps=4, lr_warmup_steps=0, lora_rank=4)  # fmt: skip
    assert isinstance(bundle, CogPath) and bundle.name == "trained_model.tar"
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
        record = json.load(tar.extractfile(TRAINING_CONFIG_FILE))
    unpack_archive(bundle, tmp_path / "bundle")
    assert {LORA_FILE, EMBEDDINGS_PTI_FILE, SPECIAL_PARAMS_FILE, PREVIEW_FILE} <= names
    assert record["plan"]["images"] == 6 and record["plan"]["steps"] == 4
    assert record["inputs"]["seed"] == 0 and record["config"]["seed"] == 0
    assert "preprocess" in record["phase_seconds"]
    assert record["family"] == family.name and record["base_model"] == base_model
    described = inspect_weights(tmp_path / "bundle")
    assert described.token_map == {"TOK": "<s0><s1>"} and described.lora is not None
    assert described.family is family
    card = (tmp_path / "bundle" / MODEL_CARD_FILE).read_text()
    assert f'resolve_model("{base_model}", "base", ".cache")' in card  # loadable, not "tiny"
    assert f'from_pretrained("{base_model}")' not in card and "checkpoints/" not in card


def test_the_model_card_loads_each_kind_of_base_model():
    pipe = "StableDiffusionXLPipeline"
    hub = base_model_loading("stabilityai/stable-diffusion-xl-base-1.0", pipe)
    assert hub == [f'pipe = {pipe}.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0")']
    single = base_model_loading("https://host/models/sdxl.safetensors?token=secret", pipe)
    assert single == [f'pipe = {pipe}.from_single_file("https://host/models/sdxl.safetensors")']
    packed = "\n".join(base_model_loading("https://host/sdxl.tar?sig=abc", pipe))
    assert "https://host/sdxl.tar" in packed and "sig=abc" not in packed


def test_dry_run_reports_the_plan_without_training(tiny_env):
    report = train_with(seed=1, resolution=64, max_train_steps=300, dry_run="true")
    with tarfile.open(report) as tar:
        names = set(tar.getnames())
        plan = json.load(tar.extractfile("plan.json"))
        pictures = {name: Image.open(tar.extractfile(name)) for name in names if "/" in name}
    assert plan["steps"] == 300 and len(plan["images"]) == 6
    assert all("TOK" in image["caption"] for image in plan["images"])
    assert plan["estimated_training_seconds"] > 0
    # Each image with its name in the upload and a picture of its crop and of its mask.
    assert [image["source"] for image in plan["images"]] == [f"cat_0{i}.jpg" for i in range(6)]
    shown = {image[key] for image in plan["images"] for key in ("thumbnail", "mask")}
    assert names == {"plan.json", PREVIEW_FILE} | shown and len(shown) == 12
    assert all(picture.size == (64, 64) for picture in pictures.values())  # the 64px crops
    # cat_01.jpg is the middle of cat_00.jpg, which is what the square crop keeps of it.
    assert plan["warnings"] == [
        "cat_00.jpg and cat_01.jpg are nearly the same photo: keep one, or add a different "
        "shot (duplicates weigh one view twice)."
    ]
    lora_alone = train_with(seed=1, resolution=64, max_train_steps=3, ti_lr=0, dry_run="true")
    with tarfile.open(lora_alone) as tar:
        warnings = json.load(tar.extractfile("plan.json"))["warnings"]
    assert len(warnings) == 2 and warnings[1].startswith("ti_lr=0 trains a LoRA alone")


def test_dry_run_warns_of_few_duplicate_and_small_photos(tiny_env, tmp_path):
    with zipfile.ZipFile(ROOT / "examples" / "cat_photos.zip") as archive:
        photo = Image.open(io.BytesIO(archive.read("cat_00.jpg")))
        other = archive.read("cat_01.jpg")
    upload = tmp_path / "photos.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        archive.writestr("a.jpg", image_bytes(photo, "JPEG", quality=95))
        archive.writestr("a-copy.jpg", image_bytes(photo, "JPEG", quality=70))  # re-saved
        archive.writestr("small.png", image_bytes(Image.open(io.BytesIO(other)).resize((40, 40))))
    report = train_with(input_images=f"@{upload}", resolution=64, dry_run="true")
    with tarfile.open(report) as tar:
        plan = json.load(tar.extractfile("plan.json"))
    assert [image["upscaled"] for image in plan["images"]] == [False, False, True]
    warnings = "\n".join(plan["warnings"])
    assert "Only 3 photo(s)" in warnings
    assert "a-copy.jpg and a.jpg are nearly the same photo" in warnings
    assert "1 photo(s) smaller than the 64px training size were upscaled (small.png)" in warnings


def test_dry_run_warns_when_the_captions_name_different_subjects(tiny_env, tmp_path):
    """Three photos captioned as a cat and three as a man: a subject trains on one. One stray
    caption is not a second subject, and a style's photos may show anything."""
    upload = tmp_path / "photos.zip"
    subjects = ["a cat on a sofa"] * 3 + ["a man in a hat"] * 3
    with zipfile.ZipFile(ROOT / "examples" / "cat_photos.zip") as cats:
        photos = [name for name in sorted(cats.namelist()) if name.endswith(".jpg")]
        with zipfile.ZipFile(upload, "w") as archive:
            for name in photos:
                archive.writestr(name, cats.read(name))
            rows = [f"{name},{caption}" for name, caption in zip(photos, subjects, strict=True)]
            archive.writestr("caption.csv", "\n".join(["image_file,caption", *rows]))

    def warnings(**inputs) -> str:
        report = train_with(input_images=f"@{upload}", resolution=64, dry_run="true", **inputs)
        with tarfile.open(report) as tar:
            return "\n".join(json.load(tar.extractfile("plan.json"))["warnings"])

    shown = warnings()
    assert "The captions name different subjects: a cat in 3" in shown
    assert f"a person in 3 ({', '.join(photos[3:6])})" in shown
    assert "different subjects" not in warnings(lora_type="style")


def test_one_stray_caption_is_not_a_second_subject(tmp_path):
    from training.dataset_review import review_warnings

    images = []
    for index in range(6):  # six different pictures: no duplicate warning either
        path = tmp_path / f"{index}.png"
        Image.new("RGB", (16, 16), (40 * index, 255 - 40 * index, 90)).save(path)
        images.append(path)
    names = [path.name for path in images]
    captions = ["a photo of TOK, a dog on grass"] * 5 + ["a photo of TOK, a man with a dog"]
    assert review_warnings(images, names, [False] * 6, 64, captions) == []
    captions[4] = "a photo of TOK, a woman"  # two of six: a fair share
    assert "a dog in 4" in review_warnings(images, names, [False] * 6, 64, captions)[0]


def test_a_request_without_learning_inputs_trains_the_recipe_and_says_so(tiny_env, capfd):
    """Nothing set: the subject recipe trains, and the log and the record say which values;
    Replicate's body (its learning inputs set) trains with exactly what it sent."""
    steps = dict(seed=0, resolution=64, train_batch_size=2, max_train_steps=2)
    records = {}
    for name, inputs in (("empty", {}), ("replicate", dict(lora_lr=2e-4, lr_warmup_steps=0))):
        with tarfile.open(train_with(**steps, **inputs)) as tar:
            records[name] = json.load(tar.extractfile(TRAINING_CONFIG_FILE))
    learning = {name: records["empty"]["config"][name] for name in LEARNING_INPUTS}
    assert learning == PRESETS["subject"].recipe
    assert "(the subject recipe: no learning input was set)" in capfd.readouterr().out
    sent = records["replicate"]["config"]
    assert (sent["optimizer"], sent["lora_lr"], sent["ti_lr"], sent["lora_rank"]) == (
        "adamw", 2e-4, 3e-4, 32)  # fmt: skip
    assert (sent["lr_warmup_steps"], sent["min_snr_gamma"], sent["ema_decay"]) == (0, 0.0, 0.0)


def test_a_training_logs_each_step_and_sample_for_clients_to_follow(tiny_env, capfd):
    bundle = train_with(seed=0, resolution=64, train_batch_size=2, max_train_steps=4,
                        lr_warmup_steps=0, lora_rank=4, sample_prompts="a photo of TOK",
                        sample_every=2)  # fmt: skip
    progress = read_progress(capfd.readouterr().out)
    assert [(row["step"], row["total"]) for row in progress.steps] == [(i, 4) for i in range(1, 5)]
    assert all(math.isfinite(row["loss"]) for row in progress.steps)
    assert [(sample["step"], sample["prompt"]) for sample in progress.samples] == [
        (2, "a photo of TOK"),
        (4, "a photo of TOK"),
    ]
    header, _, data = progress.samples[0]["thumbnail"].partition(",")
    assert header == "data:image/jpeg;base64"
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (64, 64)  # below 128 px
    # The record keeps the caption each image trained with: the zip's caption.csv.
    with tarfile.open(bundle) as tar:
        record = json.load(tar.extractfile(TRAINING_CONFIG_FILE))
    captions = [row["caption"] for row in record["captions"]]
    assert captions[1] == "a photo of TOK, close-up of a cat's face" and len(captions) == 6


def test_resolution_is_replicates_768_on_every_family_unless_given(tiny_env, monkeypatch):
    import serving.training_call as entry

    class Stop(Exception):
        pass

    asked = []

    def record_resolution(config):
        asked.append(config.resolution)
        raise Stop  # the images need not be cropped to see the size they would get

    monkeypatch.setattr(entry, "preprocess", record_resolution)
    for inputs in (
        {"base_model": TINY_SD15},
        {"base_model": TINY},
        {"base_model": TINY_SD15, "resolution": 640},
    ):
        with pytest.raises(Stop):
            train_with(**inputs)
    assert asked == [768, 768, 640]


def test_invalid_combinations_fail_before_any_work(tiny_env, monkeypatch):
    import serving.training_call as entry
    import train

    def no_preprocessing(*args, **kwargs):
        raise AssertionError("preprocessing started")

    def no_job(*args, **kwargs):
        raise AssertionError("the job started (base model, images)")

    monkeypatch.setattr(entry, "preprocess", no_preprocessing)
    monkeypatch.setattr(entry, "run_job", no_job)
    with pytest.raises(InvalidTrainingConfig, match="needs is_lora=true"):
        train_with(is_lora="false", train_text_encoder="true")
    with pytest.raises(PreprocessError, match="clipseg_temperature must be positive"):
        train_with(clipseg_temperature=0)
    with pytest.raises(PreprocessError, match="input_images_filetype='rar': use one of"):
        inputs = parse_inputs([f"input_images={EXAMPLE}"], None, inspect_entry(TRAINER_REF))
        train.train(**{**inputs, "input_images_filetype": "rar"})  # past the schema's choices


def test_aspect_buckets_is_a_train_input(tiny_env):
    plans = {}
    for buckets in ("false", "true"):
        report = train_with(seed=1, resolution=64, max_train_steps=3, dry_run="true",
                            aspect_buckets=buckets)  # fmt: skip
        with tarfile.open(report) as tar:
            plans[buckets] = json.load(tar.extractfile("plan.json"))["summary"]["sizes"]
    assert plans["false"] == {"64x64": 6}
    assert len(plans["true"]) > 1 and sum(plans["true"].values()) == 6  # portrait, landscape


def test_the_log_states_the_tarballs_size_and_warns_above_the_download_limit(tmp_path):
    tar = tmp_path / "trained_model.tar"
    tar.write_bytes(bytes(3 << 20))
    assert bundle_size_report(tar, 20 << 30) == "trained_model.tar: 3.0 MiB."
    assert "raise SDXL_TUNER_MAX_DOWNLOAD_GB" in bundle_size_report(tar, 1 << 20)
    assert TrainingConfig(seed=0).checkpointing_steps == 0  # final weights only, by default


RESUMABLE = dict(resolution=64, train_batch_size=2, max_train_steps=6, checkpointing_steps=4,
                 lr_warmup_steps=0, lora_rank=4)  # fmt: skip
# The same run in each container's inputs (FLUX.1: Replicate's Flux trainer's names).
RESUMABLE_RUNS = {
    "sdxl": (RESUMABLE, (LORA_FILE, EMBEDDINGS_PTI_FILE)),
    "flux": (
        dict(resolution="64", batch_size=2, steps=6, checkpointing_steps=4, lora_rank=4,
             optimizer="adamw", base_model=TINY_FLUX),
        (LORA_FILE,),
    ),
}  # fmt: skip


def bundle_contents(tarball) -> dict[str, bytes]:
    with tarfile.open(tarball) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.mark.parametrize("container", RESUMABLE_RUNS)
def test_a_training_continues_from_its_tarball_as_if_it_had_not_stopped(
    container, tiny_env, file_server, capsys
):
    """A run resumed from the newest checkpoint of an earlier run's tarball, by URL, ends with
    the same weights and losses as the run that went through in one go (every random draw is
    a function of seed and step, and the optimizer state travels in the checkpoint)."""
    inputs, weights = RESUMABLE_RUNS[container]
    trainer = CONTAINERS[container].trainer
    straight = bundle_contents(train_with(trainer, seed=0, **inputs))
    assert "checkpoints/checkpoint-000004/training_state/progress.json" in straight
    url = file_server.add(f"/{container}/trained_model.tar", tar_bytes(straight))

    resumed = bundle_contents(train_with(trainer, **inputs, resume_from=url))  # its seed
    assert "Resuming from step 4." in capsys.readouterr().out
    for name in weights:
        a, b = load(resumed[name]), load(straight[name])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert losses(resumed) == losses(straight) and len(losses(straight)) == 6


def losses(contents: dict[str, bytes]) -> list[tuple]:
    rows = [json.loads(line) for line in contents["metrics.jsonl"].splitlines()]
    return [(row["step"], row["loss"], row["lr"]) for row in rows]


def test_resuming_from_a_tarball_without_checkpoints_is_refused_before_training(
    tiny_env, file_server
):
    plain = bundle_contents(train_with(seed=0, **{**RESUMABLE, "checkpointing_steps": 0}))
    url = file_server.add("/plain/trained_model.tar", tar_bytes(plain))
    with pytest.raises(ValueError, match="holds no checkpoint to resume from"):
        train_with(**RESUMABLE, resume_from=url)


def test_replicates_checkpointing_steps_999999_trains_without_checkpoints(tiny_env):
    """Replicate's SDXL clients send checkpointing_steps=999999 to disable checkpoints; any
    value at least the run's steps means none."""
    bundle = train_with(seed=0, resolution=64, train_batch_size=2, max_train_steps=3,
                        lr_warmup_steps=0, lora_rank=4, checkpointing_steps=999999)  # fmt: skip
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        record = json.load(tar.extractfile(TRAINING_CONFIG_FILE))
    assert LORA_FILE in names and not any(name.startswith(CHECKPOINTS_DIR) for name in names)
    assert record["config"]["checkpointing_steps"] == 999999


@pytest.mark.parametrize(
    ("container", "base_model", "named"),
    [
        ("flux", TINY, r"'tiny' is a model of the SDXL family.*FLUX\.1 trainer.*"
         r"SDXL / SD 1\.5 container \(train\.py:train"),
        ("flux", TINY_SD15, r"'tiny-sd15' is a model of the SD 1\.5 family.*FLUX\.1 trainer"),
        ("sdxl", TINY_FLUX, r"'tiny-flux' is a model of the FLUX\.1 family.*SDXL / SD 1\.5 "
         r"trainer.*FLUX\.1 container \(train_flux\.py:train, `cog build -f cog\.flux\.yaml`\)"),
    ],
)  # fmt: skip
def test_a_trainer_refuses_another_containers_family_before_any_work(
    container, base_model, named, tiny_env, monkeypatch
):
    """Weights trained on another family's base would be refused by this container's own
    predictor: the trainer refuses the base as soon as its family is read."""
    import serving.training_call as entry

    def no_preprocessing(*args, **kwargs):
        raise AssertionError("preprocessing started")

    monkeypatch.setattr(entry, "preprocess", no_preprocessing)
    with pytest.raises(InvalidTrainingConfig, match=named):
        train_with(CONTAINERS[container].trainer, base_model=base_model, seed=0)
