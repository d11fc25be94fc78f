"""The subject the toy base has never seen: a quartered magenta-and-teal emblem.

Its two colours are outside the scene grammar's palette, so its presence in an image can be
measured by colour alone. `write_subject_zip` packs training photos the way users pack theirs.

The photos are framed and captioned the way a fine-tune of real SDXL is fed, at the toy's scale:

- the emblem fills a third to a half of each photo (radius 20-26 of 64 pixels), as a subject
  does in the crops a user uploads; smaller, each of its quarters would be one or two cells of
  the 8x8 latent, too few to learn;
- captions are in the language the base was trained on, with the trigger where the grammar
  names the object: "a TOK on a striped blue background", as "a photo of TOK dog" speaks
  SDXL's language (the toy base never saw "a photo of").

How much each choice matters is measured in docs/quality.md.
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
RADIUS = (20.0, 26.0)  # pixels of the 64x64 photo
FIXED_TIME = (2024, 1, 1, 0, 0, 0)


def draw_emblem(image: Image.Image, centre: tuple[float, float], radius: float) -> None:
    """A disc split into four quarters of alternating colours, at the supersampled scale."""
    for quarter in range(4):
        angles = (quarter * 90, (quarter + 1) * 90)
        paint_sector(image, centre, radius, angles, EMBLEM_COLOURS[quarter % 2])


def subject_caption(scene) -> str:
    """'a TOK on a striped blue background': the trigger in the grammar's object slot."""
    return f"a {TRIGGER} on {setting(scene)}"


def subject_images(count: int, seed: int) -> list[tuple[Image.Image, str]]:
    """`count` photos of the emblem on varied backgrounds and positions, with captions."""
    rng = random.Random(seed)
    photos = []
    for _ in range(count):
        scene = random_scene(rng)
        scene = replace(scene, radius=rng.uniform(*RADIUS))
        margin = scene.radius + 2
        centre = (rng.uniform(margin, SIZE - margin), rng.uniform(margin, SIZE - margin))
        image = draw_background(scene.background, COLOURS[scene.background_colour])
        draw_emblem(image, centre, scene.radius)
        image = downsample(image)
        photos.append((image, subject_caption(scene)))
    return photos


def write_subject_zip(path: Path, count: int = 8, seed: int = 0) -> Path:
    """A zip of the emblem's PNG photos and a caption.csv, reproducible byte for byte."""
    return write_photo_zip(path, subject_images(count, seed), "emblem")


def write_photo_zip(path: Path, photos: list[tuple[Image.Image, str]], stem: str) -> Path:
    """Captioned photos packed as a user packs them: `<stem>_00.png`, … and a caption.csv,
    with fixed timestamps so the zip is reproducible byte for byte."""
    captions = io.StringIO()
    writer = csv.writer(captions, lineterminator="\n")
    writer.writerow(["image_file", "caption"])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, (image, caption) in enumerate(photos):
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            name = f"{stem}_{index:02d}.png"
            archive.writestr(zipfile.ZipInfo(name, FIXED_TIME), buffer.getvalue())
            writer.writerow([name, caption])
        archive.writestr(zipfile.ZipInfo("caption.csv", FIXED_TIME), captions.getvalue())
    return path
