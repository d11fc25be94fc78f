"""Training options beyond the defaults, each in a real run on the tiny SDXL: every optimizer
trains and resumes exactly from its saved state, LoRA+ speeds up the B matrices alone, the
weight average is what gets saved (and resumes exactly), gradient checkpointing changes memory
but not the result, and aspect buckets of different sizes train in one run."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from formats.bundle import EMBEDDINGS_PTI_FILE, LORA_FILE
from tests.train_helpers import make_dataset, one_thread, small_config  # noqa: F401 (autouse)
from training.config import OPTIMIZERS
from training.loop import CHECKPOINTS_DIR, LATENTS_DIR, STATE_DIR, run_training
from weights.runtime import pick_runtime

CPU = pick_runtime("cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("dataset"))


def lora_weights(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.weights_dir / LORA_FILE))


def losses(result) -> list[float]:
    return [json.loads(line)["loss"] for line in result.metrics_file.read_text().splitlines()]


# Prodigy adapts its own step size: its learning rates are multipliers, 1.0 by advice.
LEARNING_RATES = {"prodigy": {"lora_lr": 1.0, "ti_lr": 1.0}}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_trains_and_resumes_exactly(optimizer, dataset, tiny_models, tmp_path):
    """Every choice, the bitsandbytes ones on its CPU backend. Their 8-bit states apply to
    tensors of 4096 elements or more: here the token-embedding tables, not the tiny LoRA."""
    rates = LEARNING_RATES.get(optimizer, {})
    config = small_config(optimizer=optimizer, max_train_steps=4, checkpointing_steps=2, **rates)
    whole = run_training(config, dataset, tiny_models["base"], tmp_path / "whole", CPU)
    assert all(np.isfinite(losses(whole)))
    trained = lora_weights(whole)
    lora_b = [v for k, v in trained.items() if "lora_B" in k]
    assert any(v.abs().max() > 0 for v in lora_b), "the LoRA did not move from its zero init"

    # The second half again, from the step-2 checkpoint's optimizer state.
    checkpoint = whole.work_dir / CHECKPOINTS_DIR / "checkpoint-000002"
    saved = load_file(str(checkpoint / STATE_DIR / "progress.safetensors"))
    eight_bit = any(tensor.dtype == torch.uint8 for tensor in saved.values())
    assert eight_bit == optimizer.endswith("8bit"), "8-bit states where the name says so"
    resumed = run_training(
        config, dataset, tiny_models["base"], tmp_path / "resumed", CPU, resume_from=checkpoint
    )
    again = lora_weights(resumed)
    assert again.keys() == trained.keys()
    for key, value in trained.items():
        assert torch.equal(again[key], value), f"{optimizer}: {key} differs after resume"


def test_lora_plus_moves_the_b_matrices_ratio_times_faster(dataset, tiny_models, tmp_path):
    # One AdamW step from B = 0: each entry moves by ±lr whatever its gradient's size, so with
    # LoRA+ every B is exactly `ratio` times plain LoRA's and every A is the same.
    runs = {
        ratio: lora_weights(
            run_training(
                small_config(max_train_steps=1, ti_lr=0, weight_decay=0, lora_plus_ratio=ratio),
                dataset,
                tiny_models["base"],
                tmp_path / str(ratio),
                CPU,
            )
        )
        for ratio in (1.0, 16.0)
    }
    plain, plus = runs[1.0], runs[16.0]
    lora_b = [key for key in plain if "lora_B" in key]
    assert plain.keys() == plus.keys() and all(plain[k].abs().max() > 0 for k in lora_b)
    for key, value in plain.items():
        expected = 16 * value if key in lora_b else value
        torch.testing.assert_close(plus[key], expected, rtol=1e-3, atol=1e-7)


def test_ema_saves_the_average_of_the_trained_weights_and_resumes_exactly(
    dataset, tiny_models, tmp_path
):
    base = tiny_models["base"]
    # The average does not change training: step k's raw weights are a k-step run's.
    raw = [
        lora_weights(
            run_training(
                small_config(max_train_steps=k, ti_lr=0), dataset, base, tmp_path / str(k), CPU
            )
        )
        for k in (1, 2, 3)
    ]
    steps = dict(max_train_steps=3, checkpointing_steps=2, ti_lr=0)
    averaged = run_training(
        small_config(**steps, ema_decay=0.5), dataset, base, tmp_path / "ema", CPU
    )
    got = lora_weights(averaged)
    for key in (k for k in got if "lora_B" in k):  # B starts at zero: the average is known
        expected = torch.zeros_like(got[key])
        for step, weights in enumerate(raw):
            keep = min(0.5, (1 + step) / (10 + step))  # warmup: 0.1, 0.18, 0.25
            expected = keep * expected + (1 - keep) * weights[key]
        torch.testing.assert_close(got[key], expected, rtol=1e-5, atol=1e-7)
        assert not torch.allclose(got[key], raw[-1][key])

    resumed = run_training(
        small_config(**steps, ema_decay=0.5),
        dataset,
        base,
        tmp_path / "resumed",
        CPU,
        resume_from=averaged.checkpoints[-1],
    )
    for key, value in lora_weights(resumed).items():
        assert torch.equal(value, got[key]), f"{key} differs after resuming with ema_decay"


def test_gradient_checkpointing_gives_the_same_weights(dataset, tiny_models, tmp_path):
    plain = run_training(
        small_config(max_train_steps=3), dataset, tiny_models["base"], tmp_path / "a", CPU
    )
    checkpointed = run_training(
        small_config(max_train_steps=3, gradient_checkpointing=True),
        dataset,
        tiny_models["base"],
        tmp_path / "b",
        CPU,
    )
    expected, got = lora_weights(plain), lora_weights(checkpointed)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)


def test_aspect_buckets_of_different_sizes_train_in_one_run(tiny_models, tmp_path):
    """Portrait and landscape crops (as preprocessing's aspect buckets write them) each
    batch with their own size; the run covers both and finishes."""
    folder = make_dataset(tmp_path / "dataset", count=4)
    for index, size in ((0, (64, 128)), (1, (64, 128)), (2, (128, 64)), (3, (128, 64))):
        for name in (f"{index}.src.png", f"{index}.mask.png"):
            Image.open(folder / name).resize(size).save(folder / name)
    result = run_training(
        small_config(max_train_steps=4), folder, tiny_models["base"], tmp_path / "work", CPU
    )
    assert result.plan.micro_batches_per_epoch == 2  # one batch of 2 per bucket
    assert len(losses(result)) == 4 and all(np.isfinite(losses(result)))


def test_latents_cached_on_disk_train_bit_identically(dataset, tiny_models, tmp_path):
    """cache_latents_to_disk keeps the encoded images as safetensors files in the run folder,
    read back per batch: the run is the in-memory one, bit for bit (flips and masks too)."""
    runs = {}
    for on_disk in (False, True):
        config = small_config(
            max_train_steps=3, flip_augmentation=True, cache_latents_to_disk=on_disk
        )
        runs[on_disk] = run_training(
            config, dataset, tiny_models["base"], tmp_path / str(on_disk), CPU
        )
    files = sorted((tmp_path / "True" / LATENTS_DIR).rglob("*"))
    cached = [f for f in files if f.is_file()]
    assert len(cached) == 4 and all(f.suffix == ".safetensors" for f in cached)  # one per image
    assert not (tmp_path / "False" / LATENTS_DIR).exists()
    assert losses(runs[False]) == losses(runs[True])
    for name in (LORA_FILE, EMBEDDINGS_PTI_FILE):
        memory, disk = (load_file(str(r.weights_dir / name)) for r in runs.values())
        assert memory.keys() == disk.keys()
        assert all(torch.equal(memory[key], disk[key]) for key in memory), name
