"""Shared by the training tests: a synthetic prepared dataset and a small-run config."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import TrainingConfig

SIZE = 64
CAPTION = "a photo of TOK, a red square"


def make_dataset(folder: Path, count: int = 4, masks: bool = True, size: int = SIZE) -> Path:
    """A folder as preprocessing writes it: captions.csv, square crops, greyscale masks. The
    subject (a red square on blue) is far from anything the random tiny model draws."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    unit = size // 16  # the layout scales with the image
    for index in range(count):
        image = np.empty((size, size, 3), np.uint8)
        image[:] = (30, 60, 200)
        offset = (3 + index % 3) * unit
        image[offset : offset + 8 * unit, offset : offset + 8 * unit] = (230, 40, 30)
        image = np.clip(image + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{index}.src.png")
        mask_name = ""
        if masks:
            mask = np.zeros((size, size), np.uint8)
            mask[offset - unit : offset + 9 * unit, offset - unit : offset + 9 * unit] = 255
            mask_name = f"{index}.mask.png"
            Image.fromarray(mask).save(folder / mask_name)
        rows.append((f"{index}.src.png", mask_name, CAPTION))
    with (folder / "captions.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image_path", "mask_path", "caption"])
        writer.writerows(rows)
    return folder


def small_config(**overrides) -> TrainingConfig:
    settings = dict(
        seed=0,
        resolution=SIZE,
        train_batch_size=2,
        max_train_steps=6,
        lora_rank=4,
        lr_warmup_steps=0,
        checkpointing_steps=0,
        verbose=False,
    )
    return TrainingConfig(**{**settings, **overrides})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """2 shared cores: one intra-op thread per test process is several times faster than two
    contending ones for these tiny models. Import it into a test module to apply it there."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
