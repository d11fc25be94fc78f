"""The tarball's manifest: a new tarball lists every file it holds by role, and readers (the
predictor, resume_from) find the files where the manifest puts them; a tarball without one
(written before it) loads as before; a manifest of a newer major version is refused."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from families import SDXL
from formats.bundle import (
    BUNDLE_FILE,
    FOLDER_ROLES,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    WELL_KNOWN,
    ManifestError,
    Role,
)
from tests.predict_helpers import one_torch_thread, predict_arrays, same, tiny_predictor
from tests.train_helpers import make_dataset, small_config
from tests.trained_bundles import tar_bytes
from training.bundle import write_bundle
from training.loop import run_training
from training.resume import ResumePoint
from weights.archive import unpack_archive
from weights.runtime import pick_runtime
from weights.trained_files import WeightsFormat, inspect_weights

TRIGGER = dict(prompt="a photo of TOK on the beach")
# Where the renamed tarball puts each file it moves: none of them at a well-known name.
MOVED = {
    Role.LORA: "weights/diffusers-lora.safetensors",
    Role.EMBEDDINGS_PTI: "weights/tokens.safetensors",
    Role.SPECIAL_PARAMS: "weights/tokens.json",
    Role.TRAINING_RECORD: "record/run.json",
    Role.METRICS: "record/loss.jsonl",
    Role.CHECKPOINTS: "progress",
}


@pytest.fixture(scope="module")
def threads():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def tarball(tmp_path_factory, tiny_models, threads) -> Path:
    """A LoRA + pivotal tuning run on the tiny SDXL with a checkpoint, samples and a
    preview: every role a training writes, packed by the trainer's own writer."""
    root = tmp_path_factory.mktemp("manifest")
    config = small_config(
        max_train_steps=4,
        lora_lr=3e-2,
        ti_lr=5e-2,
        checkpointing_steps=2,
        sample_prompts=("a photo of TOK",),
        sample_steps=1,
    )
    dataset = make_dataset(root / "dataset")
    result = run_training(config, dataset, tiny_models["base"], root / "run", pick_runtime("cpu"))
    preview = root / "preview.png"
    Image.new("RGB", (8, 8)).save(preview)
    return write_bundle(result, root / BUNDLE_FILE, "tiny", preview=preview)


@pytest.fixture(scope="module")
def predictor(model_cache, threads):
    return tiny_predictor(model_cache)


def members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def repacked(tarball: Path, target: Path, moved: dict[Role, str], manifest: dict | None) -> Path:
    """`tarball` with the files of each role in `moved` at its new path, and `manifest`
    (None: no manifest.json at all)."""
    renames = {WELL_KNOWN[role]: path for role, path in moved.items()}
    files = {}
    for name, data in members(tarball).items():
        top, slash, rest = name.partition("/")  # a folder role moves with what it holds
        if name != MANIFEST_FILE:
            files[renames.get(top, top) + slash + rest] = data
    if manifest is not None:
        files[MANIFEST_FILE] = json.dumps(manifest).encode()
    target.write_bytes(tar_bytes(files))
    return target


def manifest_of(tarball: Path) -> dict:
    return json.loads(members(tarball)[MANIFEST_FILE])


def test_a_new_tarball_lists_every_file_it_holds_by_role(tarball):
    names = set(members(tarball))
    manifest = manifest_of(tarball)
    assert manifest["format"] == MANIFEST_FORMAT and manifest["version"] == MANIFEST_VERSION
    assert manifest["family"] == SDXL.name and manifest["trigger_word"] == "TOK"
    assert manifest["token_map"] == {"TOK": "<s0><s1>"}
    listed = manifest["files"]
    # A LoRA + pivotal tuning run with checkpoints, samples and a preview writes every role
    # but a full fine-tune's UNet, each at its well-known name.
    assert listed == {str(role): WELL_KNOWN[role] for role in Role if role is not Role.UNET}
    for role, path in listed.items():
        if Role(role) in FOLDER_ROLES:
            assert any(name.startswith(f"{path}/") for name in names), role
        else:
            assert path in names, role
    # ...and nothing in the tarball is left out of the manifest.
    tops = {name.split("/")[0] for name in names} - {MANIFEST_FILE}
    assert tops == set(listed.values())


def test_readers_find_the_files_where_the_manifest_puts_them(tarball, predictor, tmp_path):
    """Every file the predictor reads, and what resume_from reads, moved off its well-known
    name: they are found through the manifest alone, and give the very same images."""
    manifest = manifest_of(tarball)
    manifest["files"].update({str(role): path for role, path in MOVED.items()})
    moved = repacked(tarball, tmp_path / "moved.tar", MOVED, manifest)
    unpack_archive(moved, tmp_path / "moved")
    weights = inspect_weights(tmp_path / "moved")
    assert weights.lora == tmp_path / "moved" / MOVED[Role.LORA]
    assert weights.embeddings_pti == tmp_path / "moved" / MOVED[Role.EMBEDDINGS_PTI]
    assert weights.family is SDXL and weights.token_map == {"TOK": "<s0><s1>"}

    original = predict_arrays(predictor, replicate_weights=tarball, **TRIGGER)
    assert same(predict_arrays(predictor, replicate_weights=moved, **TRIGGER), original)
    assert not same(predict_arrays(predictor, **TRIGGER), original)  # the weights do act

    resume = ResumePoint.find(tmp_path / "moved", "moved.tar")
    assert resume.checkpoint == tmp_path / "moved" / MOVED[Role.CHECKPOINTS] / "checkpoint-000002"
    assert resume.step == 2 and resume.seed == 0  # the seed: from the moved record
    resume.carry_metrics(tmp_path / "next-run")
    assert (tmp_path / "next-run" / "metrics.jsonl").read_bytes() == members(tarball)[
        "metrics.jsonl"
    ]


def test_a_tarball_without_a_manifest_loads_as_before(tarball, predictor, tmp_path):
    """What this trainer wrote before the manifest: the same files at their well-known names;
    the family, trigger word and tokens come from training_config.json and
    special_params.json, and the images are the same."""
    old = repacked(tarball, tmp_path / "old.tar", {}, manifest=None)
    assert MANIFEST_FILE not in members(old)
    unpack_archive(old, tmp_path / "old")
    unpack_archive(tarball, tmp_path / "new")
    before, now = inspect_weights(tmp_path / "old"), inspect_weights(tmp_path / "new")
    assert before.format is now.format is WeightsFormat.BUNDLE
    for fact in ("family", "trigger_word", "token_map"):
        assert getattr(before, fact) == getattr(now, fact), fact
    original = predict_arrays(predictor, replicate_weights=tarball, **TRIGGER)
    assert same(predict_arrays(predictor, replicate_weights=old, **TRIGGER), original)
    assert ResumePoint.find(tmp_path / "old", "old.tar").step == 2


def test_a_newer_minor_version_loads_and_a_newer_major_is_refused(tarball, predictor, tmp_path):
    manifest = manifest_of(tarball)
    minor = {**manifest, "version": "1.9", "colour": "blue"}  # a later minor adds things
    minor["files"] = {**manifest["files"], "sparkles": "sparkles.bin"}
    newer = repacked(tarball, tmp_path / "minor.tar", {}, minor)
    original = predict_arrays(predictor, replicate_weights=tarball, **TRIGGER)
    assert same(predict_arrays(predictor, replicate_weights=newer, **TRIGGER), original)

    major = repacked(tarball, tmp_path / "major.tar", {}, {**manifest, "version": "2.0"})
    with pytest.raises(ManifestError, match=r"major\.tar: manifest\.json is version 2\.0 .*1\.x"):
        predict_arrays(predictor, replicate_weights=major, **TRIGGER)


def test_files_other_than_the_weights_may_be_taken_out(tarball, tmp_path):
    """A user may drop the record (it names the request's URLs) or the checkpoints (the bulk
    of the size) without editing the manifest: the weights still load, with their family."""
    kept = {
        name: data
        for name, data in members(tarball).items()
        if name != WELL_KNOWN[Role.TRAINING_RECORD]
        and not name.startswith(f"{WELL_KNOWN[Role.CHECKPOINTS]}/")
    }
    (tmp_path / "slim.tar").write_bytes(tar_bytes(kept))
    unpack_archive(tmp_path / "slim.tar", tmp_path / "slim")
    weights = inspect_weights(tmp_path / "slim")
    assert weights.training_config is None and weights.lora is not None
    assert weights.family is SDXL and weights.trigger_word == "TOK"


@pytest.mark.parametrize(
    "files, message",
    [
        ({"lora": "../lora.safetensors"}, "files must lie inside the tarball"),
        ({"lora": "/etc/lora.safetensors"}, "files must lie inside the tarball"),
        ({"lora": "missing.safetensors"}, "lists missing.safetensors, which the tarball lacks"),
        ({"model_card": "README.md"}, "lists none of lora, unet, embeddings_pti"),
    ],
)
def test_a_manifest_that_does_not_fit_its_tarball_is_refused(tarball, tmp_path, files, message):
    manifest = {**manifest_of(tarball), "files": files}
    broken = repacked(tarball, tmp_path / "broken.tar", {}, manifest)
    unpack_archive(broken, tmp_path / "broken")
    with pytest.raises(ValueError, match=message):
        inspect_weights(tmp_path / "broken")
