"""The subject the toy base has never seen: a quartered magenta-and-teal emblem.

Its two colours are outside the scene grammar's palette, so its presence in an image can be
measured by colour alone. `subject_dataset` packs training photos the way users pack theirs.
"""

from __future__ import annotations

import csv
import io
import random
import zipfile
from dataclasses import replace
from pathlib import Path

from PIL import Image

from toyworld.scenes import (
    COLOURS,
    SIZE,
    downsample,
    draw_background,
    paint_sector,
    random_scene,
    setting,
)

EMBLEM_COLOURS = ((225, 30, 200), (20, 200, 190))  # magenta, teal
TRIGGER = "TOK"
FIXED_TIME = (2024, 1, 1, 0, 0, 0)


def draw_emblem(image: Image.Image, centre: tuple[float, float], radius: float) -> None:
    """A disc split into four quarters of alternating colours, at the supersampled scale."""
    for quarter in range(4):
        angles = (quarter * 90, (quarter + 1) * 90)
        paint_sector(image, centre, radius, angles, EMBLEM_COLOURS[quarter % 2])


def subject_images(count: int, seed: int) -> list[tuple[Image.Image, str]]:
    """`count` photos of the emblem on varied backgrounds and positions, with captions."""
    rng = random.Random(seed)
    photos = []
    for _ in range(count):
        scene = random_scene(rng)
        scene = replace(scene, radius=rng.uniform(12, 18))
        margin = scene.radius + 2
        centre = (rng.uniform(margin, SIZE - margin), rng.uniform(margin, SIZE - margin))
        image = draw_background(scene.background, COLOURS[scene.background_colour])
        draw_emblem(image, centre, scene.radius)
        image = downsample(image)
        photos.append((image, f"a photo of {TRIGGER} on {setting(scene)}"))
    return photos


def write_subject_zip(path: Path, count: int = 8, seed: int = 0) -> Path:
    """A zip of PNG photos and a caption.csv, reproducible byte for byte."""
    captions = io.StringIO()
    writer = csv.writer(captions, lineterminator="\n")
    writer.writerow(["image_file", "caption"])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, (image, caption) in enumerate(subject_images(count, seed)):
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            name = f"emblem_{index:02d}.png"
            archive.writestr(zipfile.ZipInfo(name, FIXED_TIME), buffer.getvalue())
            writer.writerow([name, caption])
        archive.writestr(zipfile.ZipInfo("caption.csv", FIXED_TIME), captions.getvalue())
    return path
