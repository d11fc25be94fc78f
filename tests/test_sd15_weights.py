"""SD 1.5 end to end: train() on the tiny SD 1.5, then predict() with the bundle (LoRA with
text-encoder LoRA and tokens, full fine-tune); and weights of one family refused by a predictor
of the other, with a message naming both, before anything changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from peft.tuners.lora import LoraLayer

from families import SD15, SDXL
from formats.bundle import LORA_KOHYA_FILE, MANIFEST_FILE, TRAINING_CONFIG_FILE
from generation.engine import DefaultWeightsError
from tests.predict_helpers import one_torch_thread, predict_arrays, same, tiny_predictor
from tests.test_train_entry import train_with
from tests.train_helpers import make_dataset, small_config
from tests.trained_bundles import write_kohya_lora, write_lora_bundle
from training.bundle import write_bundle
from training.loop import run_training
from weights.archive import unpack_archive
from weights.runtime import pick_runtime
from weights.trained_files import WrongFamilyError, inspect_weights

TINY_SD15 = SD15.tiny_model

TRIGGER = dict(prompt="a photo of TOK")


@pytest.fixture(scope="module")
def threads():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def sd15_bundles(tmp_path_factory, tiny_env_module, tiny_sd15_model, threads):
    """Trained on the tiny SD 1.5: `lora` through Cog's train() (LoRA on the UNet and the text
    encoder, pivotal tuning), `full` (full fine-tune) through the training loop; each as the
    tarball, its unpacked folder with and without the files that record the family
    (training_config.json, manifest.json), and its kohya file."""
    root = tmp_path_factory.mktemp("sd15-bundles")
    lora_tar = train_with(
        base_model=TINY_SD15,
        seed=0,
        resolution=64,
        train_batch_size=2,
        max_train_steps=6,
        lr_warmup_steps=0,
        lora_rank=4,
        lora_lr=3e-2,
        ti_lr=5e-2,
        train_text_encoder="true",
        text_encoder_lr=3e-2,
        checkpointing_steps=0,
    )
    config = small_config(is_lora=False, unet_learning_rate=1e-3, max_train_steps=2)
    run = run_training(
        config, make_dataset(root / "dataset"), tiny_sd15_model, root / "run", pick_runtime("cpu")
    )
    full_tar = write_bundle(run, root / "full.tar", TINY_SD15)
    bundles = {"lora": Path(lora_tar), "full": full_tar}  # the operator's paths
    unpack_archive(Path(lora_tar), root / "lora")
    unpack_archive(full_tar, root / "full")
    unrecorded = Path(shutil.copytree(root / "lora", root / "lora-unrecorded"))
    for told in (TRAINING_CONFIG_FILE, MANIFEST_FILE):  # no family: as another trainer's
        (unrecorded / told).unlink()
    bundles["unrecorded"] = unrecorded
    bundles["kohya"] = root / "lora" / LORA_KOHYA_FILE
    return bundles


@pytest.fixture(scope="module")
def tiny_env_module(model_cache, tiny_models):
    """tiny_env for a module-scoped fixture: train() reads BASE_MODEL & co. from the env."""
    from tests.conftest import tiny_variables

    with pytest.MonkeyPatch.context() as env:
        for name, value in tiny_variables(model_cache).items():
            env.setenv(name, value)
        yield model_cache


@pytest.fixture(scope="module")
def sdxl_bundles(tmp_path_factory, tiny_models):
    """SDXL weights as other tools ship them (no recorded family) and as this trainer does."""
    root, base = tmp_path_factory.mktemp("sdxl-bundles"), tiny_models["base"]
    recorded = write_lora_bundle(base, root / "recorded", seed=1)
    (recorded / TRAINING_CONFIG_FILE).write_text(json.dumps({"family": SDXL.name}))
    return {
        "unrecorded": write_lora_bundle(base, root / "unrecorded", seed=1),
        "recorded": recorded,
        "kohya": write_kohya_lora(base, root / "kohya.safetensors", seed=1),
    }


@pytest.fixture(scope="module")
def sd15_predictor(model_cache, tiny_sd15_model, threads):
    return tiny_predictor(model_cache, base_model=TINY_SD15)


def test_bundles_record_their_family_or_tell_it_by_their_tensors(sd15_bundles, sdxl_bundles):
    root = Path(sd15_bundles["unrecorded"]).parent
    for path in (root / "lora", root / "full", sd15_bundles["unrecorded"], sd15_bundles["kohya"]):
        assert inspect_weights(Path(path)).family is SD15, path
    for name in ("unrecorded", "recorded", "kohya"):
        assert inspect_weights(Path(sdxl_bundles[name])).family is SDXL, name


def test_sd15_train_then_predict_with_the_trained_weights(
    sd15_predictor, sd15_bundles, model_cache
):
    base = predict_arrays(sd15_predictor, **TRIGGER)
    trained = predict_arrays(sd15_predictor, replicate_weights=sd15_bundles["lora"], **TRIGGER)
    assert not same(trained, base)
    engine = sd15_predictor.engine
    # LoRA in the UNet and the text encoder, tokens in the tokenizer.
    for component in (engine.base.txt2img.unet, engine.base.txt2img.text_encoder):
        assert any(isinstance(m, LoraLayer) for m in component.modules())
    assert len(engine.base.txt2img.tokenizer("<s0><s1>", add_special_tokens=False).input_ids) == 2
    # The bundle without its recorded family, and as the version's own weights (COG_WEIGHTS).
    unrecorded = predict_arrays(
        sd15_predictor, replicate_weights=sd15_bundles["unrecorded"], **TRIGGER
    )
    assert same(unrecorded, trained)
    with one_torch_thread():
        version = tiny_predictor(model_cache, sd15_bundles["lora"], base_model=TINY_SD15)
        assert same(predict_arrays(version, **TRIGGER), trained)
    # A full fine-tune's UNet goes in, and out again.
    full = predict_arrays(sd15_predictor, replicate_weights=sd15_bundles["full"], **TRIGGER)
    assert not same(full, base) and not same(full, trained)
    assert same(predict_arrays(sd15_predictor, **TRIGGER), base)


def test_sdxl_weights_in_an_sd15_predictor_fail_clearly_and_change_nothing(
    sd15_predictor, sd15_bundles, sdxl_bundles
):
    trained = predict_arrays(sd15_predictor, replicate_weights=sd15_bundles["lora"], **TRIGGER)
    for name in ("recorded", "unrecorded", "kohya"):
        for inputs in (
            {"replicate_weights": sdxl_bundles[name]},
            {"extra_lora": sdxl_bundles[name]},
        ):
            with pytest.raises(
                WrongFamilyError,
                match=r"trained for SDXL \(sdxl\), but this model runs an SD 1\.5 \(sd15\) base",
            ):
                predict_arrays(
                    sd15_predictor, **{"replicate_weights": sd15_bundles["lora"], **inputs}
                )
    # Still usable, still on the weights it had.
    after = predict_arrays(sd15_predictor, replicate_weights=sd15_bundles["lora"], **TRIGGER)
    assert same(after, trained)


def test_sd15_weights_in_an_sdxl_predictor_fail_clearly(model_cache, sd15_bundles, threads):
    predictor = tiny_predictor(model_cache)
    base = predict_arrays(predictor, **TRIGGER)
    for name in ("lora", "unrecorded", "kohya", "full"):
        with pytest.raises(WrongFamilyError) as error:
            predict_arrays(predictor, replicate_weights=sd15_bundles[name], **TRIGGER)
        message = str(error.value)
        assert "trained for SD 1.5 (sd15), but this model runs an SDXL (sdxl) base" in message
        assert f"BASE_MODEL={SD15.default_base_model}" in message
    assert same(predict_arrays(predictor, **TRIGGER), base)
    # As a version's own weights: the predictor starts, and each request that would use
    # them says why it cannot.
    version = tiny_predictor(model_cache, sd15_bundles["lora"])
    with pytest.raises(DefaultWeightsError, match="COG_WEIGHTS.*trained for SD 1.5"):
        predict_arrays(version, **TRIGGER)
