"""Quality metrics for the toy world, computed from pixels alone (no learned judge).

- subject presence: both emblem colours cover a visible share of the image;
- background match: the border's dominant colour is the prompted background colour;
- object colour match: the dominant non-background colour is the prompted object colour;
- drift: mean absolute pixel difference between two models' images for the same prompt and seed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from toyworld.scenes import COLOURS, lighter
from toyworld.subject import EMBLEM_COLOURS

BORDER = 4  # pixels of the image edge read as background
COLOUR_TOLERANCE = 60.0  # RGB distance within which a pixel counts as a palette colour
MIN_SUBJECT_SHARE = 0.02  # each emblem colour must cover 2% of the image

# Every palette colour and its lighter pattern tone name the same colour.
_NAMES = [name for name in COLOURS for _ in range(2)]
_PALETTE = np.array([tone for rgb in COLOURS.values() for tone in (rgb, lighter(rgb))], float)


def pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    """H x W x 3 float array in 0..255."""
    array = np.asarray(image, dtype=np.float64)
    return array * 255.0 if array.max() <= 1.0 else array


def colour_share(image, rgb: tuple[int, int, int], tolerance: float = COLOUR_TOLERANCE) -> float:
    distance = np.linalg.norm(pixels(image) - np.array(rgb, float), axis=-1)
    return float((distance < tolerance).mean())


def subject_present(image) -> bool:
    return all(colour_share(image, rgb) >= MIN_SUBJECT_SHARE for rgb in EMBLEM_COLOURS)


def nearest_colour_names(values: np.ndarray) -> list[str]:
    distance = np.linalg.norm(values[:, None, :] - _PALETTE[None], axis=-1)
    return [_NAMES[i] for i in distance.argmin(axis=1)]


def dominant(names: list[str]) -> str:
    return max(set(names), key=names.count)


def background_colour(image) -> str:
    array = pixels(image)
    edge = np.concatenate(
        [
            array[:BORDER].reshape(-1, 3),
            array[-BORDER:].reshape(-1, 3),
            array[:, :BORDER].reshape(-1, 3),
            array[:, -BORDER:].reshape(-1, 3),
        ]
    )
    return dominant(nearest_colour_names(edge))


def object_colour(image) -> str | None:
    """The dominant palette colour among pixels that are not the background's colour."""
    background = background_colour(image)
    names = [n for n in nearest_colour_names(pixels(image).reshape(-1, 3)) if n != background]
    return dominant(names) if names else None


def drift(image_a, image_b) -> float:
    """Mean absolute difference in 0..1 between two images of the same size."""
    return float(np.abs(pixels(image_a) - pixels(image_b)).mean() / 255.0)
