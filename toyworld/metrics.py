"""Quality metrics for the toy world, computed from pixels alone (no learned judge).

- subject presence: both emblem colours cover a visible share of the image;
- background match: the border's dominant colour is the prompted background colour;
- object colour match: the dominant non-background colour is the prompted object colour;
- background pattern: how the border's tone varies along x and y (plain, striped, gradient,
  checked);
- emblem shape: the emblem's colours sit in alternating quarters around their centre;
- dusk (the style): an image at most DUSK_READ as bright as the base model's image of the same
  scene and seed; its colours are read among the palette's tones at full brightness and at dusk;
- drift: mean absolute pixel difference between two models' images for the same prompt and seed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from toyworld.scenes import COLOURS, lighter
from toyworld.style import DUSK, dusk
from toyworld.subject import EMBLEM_COLOURS

BORDER = 4  # pixels of the image edge read as background
COLOUR_TOLERANCE = 60.0  # RGB distance within which a pixel counts as a palette colour
MIN_SUBJECT_SHARE = 0.02  # each emblem colour must cover 2% of the image
MIN_TONE_CONTRAST = 30.0  # RGB distance between a background's two tones to read its pattern
PATTERN_SPREAD = 0.15  # spread of the tone position along a border band that counts as a pattern
DUSK_READ = (1 + DUSK) / 2  # brightness ratio to the base's image below which an image is at dusk

# Every palette colour and its lighter pattern tone name the same colour.
_NAMES = [name for name in COLOURS for _ in range(2)]
_PALETTE = np.array([tone for rgb in COLOURS.values() for tone in (rgb, lighter(rgb))], float)


# The same tones at dusk (the style) name the same colours too.
_TONES = np.concatenate([_PALETTE, [dusk(tuple(int(c) for c in tone)) for tone in _PALETTE]])
_TONE_NAMES = _NAMES * 2


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


def brightness(image) -> float:
    """Mean pixel value in 0..255."""
    return float(pixels(image).mean())


def at_dusk(image, base_image) -> bool:
    """Drawn at dusk: at most DUSK_READ as bright as the base model's image of the same scene
    and seed (dusk keeps 0.45 of every colour). Black backgrounds barely darken at dusk."""
    return brightness(image) <= DUSK_READ * brightness(base_image)


def tone_colours(image) -> tuple[str, str | None]:
    """(background colour, object colour), each pixel read as the name of its nearest tone at
    full brightness or at dusk."""
    array = pixels(image)
    nearest = np.linalg.norm(array[..., None, :] - _TONES, axis=-1).argmin(axis=-1)
    edge = np.ones(nearest.shape, bool)
    edge[BORDER:-BORDER, BORDER:-BORDER] = False
    background = dominant([_TONE_NAMES[i] for i in nearest[edge]])
    names = [n for n in (_TONE_NAMES[i] for i in nearest.ravel()) if n != background]
    return background, dominant(names) if names else None


def drift(image_a, image_b) -> float:
    """Mean absolute difference in 0..1 between two images of the same size."""
    return float(np.abs(pixels(image_a) - pixels(image_b)).mean() / 255.0)


def background_pattern(image) -> str | None:
    """'plain', 'striped', 'gradient' or 'checked', read from the border bands: stripes vary
    along x only, a gradient along y only, checks along both. Each border pixel is placed on
    the line from the background colour (0) to its lighter tone (1); a band varies when that
    position's spread along it exceeds PATTERN_SPREAD. None when the two tones are too alike
    to tell apart (white)."""
    array = pixels(image)
    base = np.array(COLOURS[background_colour(image)], float)
    axis = np.array(lighter(tuple(int(c) for c in base)), float) - base
    if np.linalg.norm(axis) < MIN_TONE_CONTRAST:
        return None
    tone = ((array - base) @ axis) / (axis @ axis)
    along_x = [tone[:BORDER].mean(axis=0), tone[-BORDER:].mean(axis=0)]  # top, bottom rows
    along_y = [tone[:, :BORDER].mean(axis=1), tone[:, -BORDER:].mean(axis=1)]  # left, right
    varies_x = np.mean([band.std() for band in along_x]) > PATTERN_SPREAD
    varies_y = np.mean([band.std() for band in along_y]) > PATTERN_SPREAD
    return {
        (False, False): "plain",
        (True, False): "striped",
        (False, True): "gradient",
        (True, True): "checked",
    }[(bool(varies_x), bool(varies_y))]


def emblem_quartered(image) -> bool:
    """The emblem's shape, not just its colours: around the centre of the emblem-coloured
    pixels, diagonal quarters share a colour and neighbouring quarters differ."""
    array = pixels(image)
    masks = [
        np.linalg.norm(array - np.array(rgb, float), axis=-1) < COLOUR_TOLERANCE
        for rgb in EMBLEM_COLOURS
    ]
    if min(mask.mean() for mask in masks) < MIN_SUBJECT_SHARE:
        return False
    ys, xs = np.nonzero(masks[0] | masks[1])
    cy, cx = ys.mean(), xs.mean()
    rows, cols = np.indices(masks[0].shape)
    first = []  # per quarter: is the first colour the majority?
    for below in (False, True):
        for right in (False, True):
            quarter = ((rows > cy) == below) & ((cols > cx) == right)
            counts = [int((mask & quarter).sum()) for mask in masks]
            if sum(counts) == 0:
                return False
            first.append(counts[0] > counts[1])
    top_left, top_right, bottom_left, bottom_right = first
    return top_left == bottom_right != top_right == bottom_left
