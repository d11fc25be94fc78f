"""Small images of simple scenes with captions from a small grammar, deterministic from a seed.

    "a red star on a striped blue background"

Scenes are drawn 4x larger and downsampled, so edges are anti-aliased like photos' are.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SIZE = 64
SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (130, 50, 170),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle", "star", "ring")
BACKGROUNDS = ("plain", "gradient", "striped", "checked")


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    background_colour: str
    centre: tuple[float, float]  # in pixels of the final image
    radius: float

    @property
    def caption(self) -> str:
        return describe(self)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe(scene) -> str:
    """'a red star on a striped blue background': a scene's caption in the grammar."""
    return f"{article(scene.colour)} {scene.colour} {scene.shape} on {setting(scene)}"


def setting(scene) -> str:
    """'a striped blue background': the part of a caption that describes the background."""
    return f"{article(scene.background)} {scene.background} {scene.background_colour} background"


def random_scene(rng: random.Random) -> Scene:
    colour = rng.choice(list(COLOURS))
    background_colour = rng.choice([c for c in COLOURS if c != colour])
    radius = rng.uniform(9, 15)
    margin = radius + 2
    return Scene(
        shape=rng.choice(SHAPES),
        colour=colour,
        background=rng.choice(BACKGROUNDS),
        background_colour=background_colour,
        centre=(rng.uniform(margin, SIZE - margin), rng.uniform(margin, SIZE - margin)),
        radius=radius,
    )


def scenes(count: int, seed: int) -> list[Scene]:
    rng = random.Random(seed)
    return [random_scene(rng) for _ in range(count)]


def lighter(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The second tone of patterned backgrounds."""
    return tuple(int(c + (255 - c) * 0.55) for c in rgb)


def draw_background(kind: str, base: tuple[int, int, int]) -> Image.Image:
    """A background of colour `base` at the supersampled size."""
    size = SIZE * SUPERSAMPLE
    light = lighter(base)
    image = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(image)
    if kind == "gradient":
        for y in range(size):
            t = y / (size - 1)
            draw.line(
                [(0, y), (size, y)],
                fill=tuple(int(a + (b - a) * t) for a, b in zip(light, base, strict=True)),
            )
    elif kind == "striped":
        stripe = size // 8
        for x in range(0, size, 2 * stripe):
            draw.rectangle([x, 0, x + stripe - 1, size], fill=light)
    elif kind == "checked":
        cell = size // 8
        for y in range(0, size, cell):
            for x in range(0, size, cell):
                if (x // cell + y // cell) % 2:
                    draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=light)
    return image


def shape_mask(shape: str, centre: tuple[float, float], radius: float) -> Image.Image:
    """A supersampled greyscale mask of one grammar shape (255 inside)."""
    size = SIZE * SUPERSAMPLE
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = (c * SUPERSAMPLE for c in centre)
    r = radius * SUPERSAMPLE
    if shape in ("circle", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if shape == "ring":
            hole = r * 0.55
            draw.ellipse([cx - hole, cy - hole, cx + hole, cy + hole], fill=0)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=255)
    elif shape == "triangle":
        draw.polygon([_polar(cx, cy, r, 90 + k * 120) for k in range(3)], fill=255)
    elif shape == "star":
        points = [_polar(cx, cy, r if k % 2 == 0 else r * 0.45, 90 + k * 36) for k in range(10)]
        draw.polygon(points, fill=255)
    else:
        raise ValueError(f"Unknown shape {shape!r}")
    return mask


def render(scene: Scene) -> Image.Image:
    return render_with_mask(scene)[0]


def render_with_mask(scene: Scene) -> tuple[Image.Image, Image.Image]:
    """The scene at SIZE x SIZE, and its object's greyscale mask (255 inside) at that size."""
    image = draw_background(scene.background, COLOURS[scene.background_colour])
    mask = paint_shape(image, scene.shape, scene.centre, scene.radius, COLOURS[scene.colour])
    return downsample(image), downsample_mask(mask)


def paint_shape(
    image: Image.Image,
    shape: str,
    centre: tuple[float, float],
    radius: float,
    rgb: tuple[int, int, int],
) -> Image.Image:
    """Paint a grammar shape onto a supersampled image; returns the shape's mask."""
    mask = shape_mask(shape, centre, radius)
    image.paste(Image.new("RGB", image.size, rgb), mask=mask)
    return mask


def paint_sector(
    image: Image.Image,
    centre: tuple[float, float],
    radius: float,
    angles: tuple[float, float],
    rgb: tuple[int, int, int],
) -> None:
    """Paint a disc's sector onto a supersampled image; angles in degrees, clockwise from
    3 o'clock."""
    cx, cy = (c * SUPERSAMPLE for c in centre)
    r = radius * SUPERSAMPLE
    box = [cx - r, cy - r, cx + r, cy + r]
    ImageDraw.Draw(image).pieslice(box, start=angles[0], end=angles[1], fill=rgb)


def downsample(image: Image.Image) -> Image.Image:
    """A supersampled drawing at the final SIZE x SIZE, anti-aliased."""
    return image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def downsample_mask(mask: Image.Image) -> Image.Image:
    """A supersampled mask at SIZE x SIZE: each pixel the covered share of its area."""
    return mask.resize((SIZE, SIZE), Image.Resampling.BOX)


def _polar(cx: float, cy: float, r: float, degrees: float) -> tuple[float, float]:
    angle = math.radians(degrees)
    return cx + r * math.cos(angle), cy - r * math.sin(angle)
