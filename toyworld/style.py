"""A style the toy base has never seen: dusk, every colour of the picture at 45% brightness.

A style, unlike a subject, is not a thing in the picture but a look over all of it: the scene
underneath is whatever the caption says, and the style changes how all of it is drawn. The
toy base only ever drew the grammar's palette at full brightness (and its lighter pattern
tones), so dusk's dark tones are new to it. Dusk keeps each colour's hue, so both the style
and the scene can be read back from the pixels (`toyworld.metrics.at_dusk`, `tone_colours`).
The look is low-frequency on purpose: the toy VAE's 8x8 latent cannot carry fine textures (a
grid of small dots does not survive its round trip).

The photos are grammar scenes drawn at dusk, captioned with the style preset's words after the
scene, where the toy base's text encoder is least thrown by them: "a red star on a striped
blue background in the style of TOK". (Put first, words the base never saw make it draw
almost no prompted background; after the scene it still draws about half.)
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from toyworld.scenes import Scene, render, scenes
from toyworld.subject import TRIGGER, write_photo_zip

DUSK = 0.45  # the style's brightness factor


def style_prompt(scene_text: str) -> str:
    """'a red star on … in the style of TOK'."""
    return f"{scene_text} in the style of {TRIGGER}"


def dusk(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(c * DUSK) for c in rgb)


def style_image(scene: Scene) -> Image.Image:
    """The scene rendered, then every pixel at DUSK of its brightness."""
    return render(scene).point(lambda value: int(value * DUSK))


def style_images(count: int, seed: int) -> list[tuple[Image.Image, str]]:
    """`count` grammar scenes at dusk, captioned with the trigger."""
    return [(style_image(scene), style_prompt(scene.caption)) for scene in scenes(count, seed)]


def write_style_zip(path: Path, count: int = 8, seed: int = 0) -> Path:
    """A zip of the style's PNG photos and a caption.csv, reproducible byte for byte."""
    return write_photo_zip(path, style_images(count, seed), "dusk")
