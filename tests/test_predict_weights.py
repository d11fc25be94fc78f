"""predict() with trained weights: every bundle layout, the version default, per-request
overrides, stacking, and switching that leaves no state behind (even when it fails)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cog import CancelationException
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save

from formats.bundle import EMBEDDINGS_PTI_FILE, LORA_FILE, TRAINING_CONFIG_FILE
from generation import switcher
from generation.lora import LoraFormatError
from generation.request import InvalidRequestError
from tests.predict_helpers import one_torch_thread, predict_arrays, same, tiny_predictor
from tests.trained_bundles import (
    tar_bytes,
    tar_folder,
    write_full_finetune_bundle,
    write_kohya_lora,
    write_legacy_bundle,
    write_lora_bundle,
    write_tokens,
)
from weights.settings import LOADED_WEIGHTS_VARIABLE, ModelSettings
from weights.store import StoreError

TRIGGER = dict(prompt="a photo of TOK on the beach")
PLAIN = dict(prompt="a photo of a cat")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_models):
    base, root = tiny_models["base"], tmp_path_factory.mktemp("bundles")
    bad = write_lora_bundle(base, root / "bad", seed=1)
    write_tokens(bad, seed=1, widths=(16, 16))  # embeddings for another model
    # Paths (the operator's): a request over HTTP may only name URLs (test_serving.py).
    return {
        "A": tar_folder(write_lora_bundle(base, root / "A", seed=1)),
        "B": write_lora_bundle(base, root / "B", seed=2),  # an unpacked folder
        "R8": write_lora_bundle(base, root / "R8", seed=7, rank=8),  # another rank
        "F": write_full_finetune_bundle(base, root / "F", seed=4),
        "G": tar_folder(write_full_finetune_bundle(base, root / "G", seed=5)),
        "kohya_A": write_kohya_lora(base, root / "kohya_A.safetensors", seed=1),
        "kohya_C": write_kohya_lora(base, root / "kohya_C.safetensors", seed=6),
        "legacy": tar_folder(write_legacy_bundle(base, root / "legacy", seed=3)),
        "bad": bad,
    }


@pytest.fixture(scope="module")
def threads():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def predictor(model_cache, threads):
    return tiny_predictor(model_cache)


@pytest.fixture(scope="module")
def fresh(model_cache, bundles, threads):
    """For each of none/A/B/R8/F/G: the output of a freshly set-up predictor whose version
    default (COG_WEIGHTS) is that bundle: what every switch must reproduce exactly."""
    outputs = {}
    for name in (None, "A", "B", "R8", "F", "G"):
        predictor = tiny_predictor(model_cache, bundles[name] if name else None)
        outputs[name] = predict_arrays(predictor, **TRIGGER)
    return outputs


def _run(predictor, bundles, name, **inputs):
    weights = {"replicate_weights": bundles[name]} if name else {}
    return predict_arrays(predictor, **{**TRIGGER, **weights, **inputs})


def test_switching_in_any_order_matches_fresh_loads_exactly(predictor, bundles, fresh):
    assert len({fresh[n][0].tobytes() for n in fresh}) == len(fresh)  # all differ
    sequence = ("A", "B", None, "A", "R8", "B", "F", "R8", "G", None, "F", "F", "A", None)
    for name in sequence:
        assert same(_run(predictor, bundles, name), fresh[name]), f"after switching to {name}"


def test_version_default_persists_and_replicate_weights_overrides_one_request(
    model_cache, bundles, fresh
):
    with one_torch_thread():
        version = tiny_predictor(model_cache, bundles["A"])
        assert same(predict_arrays(version, **TRIGGER), fresh["A"])
        assert same(_run(version, bundles, "B"), fresh["B"])
        assert same(predict_arrays(version, **TRIGGER), fresh["A"])  # back to the default
        assert same(_run(version, bundles, "F"), fresh["F"])
        assert same(predict_arrays(version, **TRIGGER), fresh["A"])


def test_lora_changes_the_output_scale_zero_is_the_base_and_scale_may_exceed_one(
    predictor, bundles
):
    base = predict_arrays(predictor, **PLAIN)
    trained = predict_arrays(predictor, replicate_weights=bundles["A"], **PLAIN)
    assert not same(base, trained)
    off = predict_arrays(predictor, replicate_weights=bundles["A"], lora_scale=0.0, **PLAIN)
    assert same(off, base)
    strong = predict_arrays(predictor, replicate_weights=bundles["A"], lora_scale=1.5, **PLAIN)
    assert not same(strong, trained) and not same(strong, base)


def test_trained_tokens_reach_base_and_refiner_and_leave_with_the_bundle(predictor, bundles):
    engine = predictor.engine
    vectors = load_file(f"{bundles['B']}/{EMBEDDINGS_PTI_FILE}")
    refined = _run(predictor, bundles, "B", refine="expert_ensemble_refiner", num_inference_steps=2)
    assert refined[0].shape == (64, 64, 3)
    refiner, base = engine.refiner.img2img, engine.base.txt2img
    for pipeline, index, encoder in (
        (base, 0, base.text_encoder),
        (base, 1, base.text_encoder_2),
        (refiner, 1, refiner.text_encoder_2),
    ):
        tokenizer = pipeline.tokenizer if index == 0 else pipeline.tokenizer_2
        ids = tokenizer("<s0><s1>", add_special_tokens=False).input_ids
        assert len(ids) == 2
        rows = encoder.get_input_embeddings().weight[ids].cpu()
        expected = vectors[f"text_encoders_{index}"].to(rows.dtype)  # bf16 on a GPU
        torch.testing.assert_close(rows, expected, rtol=0, atol=0)
    # A prompt with the trigger differs from the same prompt without the tokens installed.
    ensemble = dict(refine="expert_ensemble_refiner", num_inference_steps=2, lora_scale=0)
    assert not same(
        _run(predictor, bundles, None, **ensemble), _run(predictor, bundles, "B", **ensemble)
    )
    # Without a bundle, every pipeline is back on tokenizers that do not know the tokens.
    _run(predictor, bundles, None)
    for pipeline in (base, engine.base.inpaint, refiner, engine.refiner.inpaint):
        assert "<s0>" not in pipeline.tokenizer_2.get_vocab()


def test_a_prompt_without_the_trigger_is_told_that_the_trained_tokens_go_unused(
    predictor, bundles, capsys
):
    _run(predictor, bundles, "B")
    assert "Trained tokens for TOK in the prompt." in capsys.readouterr().out
    _run(predictor, bundles, "B", prompt="a photo of a cat")
    assert "The prompt does not contain TOK" in capsys.readouterr().out
    _run(predictor, bundles, None, prompt="a photo of a cat")  # no weights: nothing to say
    assert "does not contain" not in capsys.readouterr().out


def test_kohya_layout_loads_identically_and_legacy_bundles_load(predictor, bundles):
    diffusers_layout = predict_arrays(predictor, replicate_weights=bundles["A"], **PLAIN)
    kohya_layout = predict_arrays(predictor, replicate_weights=bundles["kohya_A"], **PLAIN)
    assert same(kohya_layout, diffusers_layout)
    legacy = _run(predictor, bundles, "legacy")
    assert not same(legacy, _run(predictor, bundles, None))


def test_stacking_an_extra_lora(predictor, bundles):
    main = _run(predictor, bundles, "A")
    stacked = _run(predictor, bundles, "A", extra_lora=bundles["kohya_C"])
    assert not same(stacked, main)
    assert not same(stacked, _run(predictor, bundles, None, extra_lora=bundles["kohya_C"]))
    unweighted = _run(predictor, bundles, "A", extra_lora=bundles["kohya_C"], extra_lora_scale=0)
    assert same(unweighted, main)
    with pytest.raises(InvalidRequestError, match="full fine-tune cannot be stacked"):
        _run(predictor, bundles, "A", extra_lora=bundles["F"])


def test_loras_stack_any_number_and_leave_nothing_behind(predictor, bundles, fresh):
    one = _run(predictor, bundles, "A", extra_lora=bundles["kohya_C"])
    assert same(_run(predictor, bundles, "A", loras={bundles["kohya_C"]: 0.6}), one)
    two = _run(predictor, bundles, "A", loras={bundles["kohya_C"]: 0.6, bundles["R8"]: 0.8})
    three = _run(
        predictor,
        bundles,
        "A",
        extra_lora=bundles["kohya_C"],
        loras={bundles["R8"]: 0.8, bundles["kohya_A"]: 0.5},
    )
    assert len({one[0].tobytes(), two[0].tobytes(), three[0].tobytes()}) == 3
    zero = _run(predictor, bundles, "A", loras={bundles["kohya_C"]: 0, bundles["R8"]: 0})
    assert same(zero, fresh["A"])  # scale 0 is no LoRA at all
    assert same(_run(predictor, bundles, "A"), fresh["A"])  # the next request: none left
    assert same(_run(predictor, bundles, None), fresh[None])
    assert same(_run(predictor, bundles, "A", loras={bundles["kohya_C"]: 0.6}), one)


def test_weights_that_do_not_fit_fail_clearly_and_change_nothing(predictor, bundles, fresh):
    assert same(_run(predictor, bundles, "B"), fresh["B"])
    with pytest.raises(LoraFormatError, match="width is 32: they were trained for another"):
        _run(predictor, bundles, "bad")
    with pytest.raises(StoreError, match="no such file"):
        _run(predictor, bundles, None, replicate_weights=Path("/nowhere/weights.tar"))
    with pytest.raises(InvalidRequestError, match="replicate_weights: '/nowhere/w.tar' is not an"):
        _run(predictor, bundles, None, replicate_weights="/nowhere/w.tar")  # text: a client's
    assert same(_run(predictor, bundles, None), fresh[None])
    assert same(_run(predictor, bundles, "B"), fresh["B"])


def test_a_switch_cancelled_midway_leaves_a_clean_model(predictor, bundles, fresh, monkeypatch):
    assert same(_run(predictor, bundles, "F"), fresh["F"])  # UNet overwritten...

    def cancelled(*args, **kwargs):  # ...then Cog cancels while B's tokens go in
        raise CancelationException()

    with monkeypatch.context() as patch:
        patch.setattr(switcher.TokenEmbeddingsHandler, "load_vectors", cancelled)
        with pytest.raises(CancelationException):
            _run(predictor, bundles, "B")
    engine = predictor.engine
    assert not any(isinstance(m, LoraLayer) for m in engine.base.txt2img.unet.modules())
    assert same(_run(predictor, bundles, None), fresh[None])
    assert same(_run(predictor, bundles, "B"), fresh["B"])
    assert same(_run(predictor, bundles, "F"), fresh["F"])


def test_lora_cache_is_bounded(predictor, bundles):
    cache = predictor.engine.weights_cache
    budget = cache.max_bytes
    try:
        cache.max_bytes = 1  # every entry is over budget: only the latest stays
        _run(predictor, bundles, "A")
        _run(predictor, bundles, "B")
        assert bundles["B"] in cache and bundles["A"] not in cache
        assert same(_run(predictor, bundles, "A"), _run(predictor, bundles, "A"))
    finally:
        cache.max_bytes = budget


def test_a_count_bounds_the_lora_cache_as_a_fleet_replica_sets_it(predictor, bundles, monkeypatch):
    monkeypatch.setenv(LOADED_WEIGHTS_VARIABLE, "2")
    assert ModelSettings.from_env().loaded_weights == 2  # what the engine builds its cache with
    cache = predictor.engine.weights_cache
    monkeypatch.setattr(cache, "max_entries", 2)
    for name in ("A", "B", "R8"):
        _run(predictor, bundles, name)
    loads = cache.loads
    assert bundles["A"] not in cache and bundles["B"] in cache and bundles["R8"] in cache
    _run(predictor, bundles, "B")  # held: no load
    _run(predictor, bundles, "A")  # evicted: loaded again; R8, least recently used, goes
    assert cache.loads == loads + 1 and bundles["R8"] not in cache


def test_weights_from_urls_go_through_the_store_and_stay_cached(
    predictor, bundles, fresh, file_server
):
    bundle_url = file_server.add("/trainings/1/trained_model.tar", Path(bundles["A"]))
    style_url = file_server.add("/loras/style.safetensors", Path(bundles["kohya_C"]))
    from_url = predict_arrays(predictor, replicate_weights=bundle_url, **TRIGGER)
    assert same(from_url, fresh["A"])
    stacked = predict_arrays(
        predictor, replicate_weights=bundle_url, extra_lora=style_url, **TRIGGER
    )
    assert same(stacked, _run(predictor, bundles, "A", extra_lora=bundles["kohya_C"]))
    assert file_server.requests("/trainings/1/trained_model.tar") == 1  # then from memory
    assert file_server.requests("/loras/style.safetensors") == 1


def test_refused_downloads_never_become_store_entries(predictor, bundles, fresh, file_server):
    lora = load_file(str(Path(bundles["B"]) / LORA_FILE))
    key = next(k for k in lora if ".lora_A." in k)
    misspelt = {k.replace(".lora_A.", ".lora_X.") if k == key else k: v for k, v in lora.items()}
    other_family = Path(bundles["B"]).parent / "other-family"
    shutil.copytree(bundles["B"], other_family)
    (other_family / TRAINING_CONFIG_FILE).write_text(json.dumps({"family": "sd15"}))
    whole = tar_folder(Path(bundles["B"])).read_bytes()
    cases = {
        "/pickled.tar": (tar_bytes({"model.bin": b"\x80\x04K\x01."}), "pickle files"),
        "/other-family.tar": (tar_folder(other_family).read_bytes(), "trained for SD 1.5"),
        "/notes.tar": (tar_bytes({"notes.txt": b"hello"}), "not a trained-weights bundle"),
        "/cut.tar": (whole[: len(whole) // 2], r"http://127\.0\.0\.1:\d+/cut\.tar"),
        "/misspelt.safetensors": (save(misspelt), r"2 LoRA keys cannot be placed: .*\.lora_X\."),
        "/wrong-shape.tar": (tar_folder(Path(bundles["bad"])).read_bytes(), "width is 32"),
    }
    store = predictor.engine.weights_cache.store
    before = sorted(p.name for p in store.root.iterdir())
    for path, (data, message) in cases.items():
        with pytest.raises(Exception, match=message):
            _run(predictor, bundles, None, replicate_weights=file_server.add(path, data))
        assert sorted(p.name for p in store.root.iterdir()) == before, path  # deleted at once
    assert same(_run(predictor, bundles, None), fresh[None])  # and nothing changed


@pytest.mark.parametrize(
    ("layout", "edit", "message"),
    [
        ("B", lambda k: k.replace(".lora_B.", ".lora_b."), r"cannot be placed: .*\.lora_b\."),
        ("B", lambda k: k.replace("unet.", "unet2.", 1), r"cannot be placed: unet2\."),
        ("B", lambda k: k.replace(".lora_A.weight", ".lora_A.bias"), r"cannot be placed"),
        ("kohya_A", lambda k: k.replace(".lora_down.", ".lora_dwn."), r"lora_dwn\.weight"),
    ],
)
def test_lora_files_with_unplaceable_keys_are_refused_whole(
    predictor, bundles, fresh, tmp_path, layout, edit, message
):
    source = bundles[layout] / LORA_FILE if layout == "B" else bundles[layout]
    tensors = load_file(str(source))
    first = next(k for k in tensors if edit(k) != k)  # only the first module's key is odd
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(save({edit(k) if k == first else k: v for k, v in tensors.items()}))
    with pytest.raises(LoraFormatError, match=message):
        _run(predictor, bundles, None, replicate_weights=edited)
    assert same(_run(predictor, bundles, None), fresh[None])
