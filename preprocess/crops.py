"""Where to crop, and to which size: salience / face / centre crops, aspect-ratio buckets."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

MAX_BUCKET_ASPECT = 2.0  # from 1:2 to 2:1
BUCKET_STEP = 64  # SDXL-friendly sides; smaller resolutions (tests) use the size multiple


def square(resolution: int) -> tuple[int, int]:
    return resolution, resolution


def aspect_buckets(resolution: int, size_multiple: int = 8) -> list[tuple[int, int]]:
    """(width, height) sizes of about `resolution`² pixels, sides multiples of the step,
    aspect ratios from 1:2 to 2:1, always including the square. `size_multiple`: what every
    side must be a multiple of (the VAE's 8; Flux's 2x2 packing makes 16)."""
    step = BUCKET_STEP if resolution >= 4 * BUCKET_STEP else size_multiple
    area = resolution * resolution
    buckets = {square(resolution)}
    for width in range(step, 2 * resolution + 1, step):
        height = (area // width) // step * step
        if height and max(width, height) / min(width, height) <= MAX_BUCKET_ASPECT:
            buckets.update({(width, height), (height, width)})
    return sorted(buckets)


def closest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest (in log space) to the image's."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def center_of_mass(mask: Image.Image) -> tuple[float, float]:
    """Mask-weighted centre (x, y) in pixels; the image centre for an empty mask."""
    weights = np.asarray(mask.convert("L"), dtype=np.float64)
    columns, rows = weights.sum(axis=0), weights.sum(axis=1)
    total = columns.sum()
    if total <= 0:
        return mask.width / 2, mask.height / 2
    x = columns @ np.arange(mask.width) / total
    y = rows @ np.arange(mask.height) / total
    return x + 0.5, y + 0.5


def crop_box(
    size: tuple[int, int], target: tuple[int, int], center: tuple[float, float]
) -> tuple[int, int, int, int]:
    """The largest box with `target`'s aspect ratio inside `size`, centred on `center` as
    far as the image edges allow."""
    width, height = size
    scale = min(width / target[0], height / target[1])
    box_w, box_h = min(width, round(target[0] * scale)), min(height, round(target[1] * scale))
    left = int(round(min(max(center[0] - box_w / 2, 0), width - box_w)))
    top = int(round(min(max(center[1] - box_h / 2, 0), height - box_h)))
    return left, top, left + box_w, top + box_h


def box_center(boxes: list[tuple[int, int, int, int]], size: tuple[int, int]):
    """Centre of the boxes' union (x, y), or the image centre without boxes."""
    if not boxes:
        return size[0] / 2, size[1] / 2
    left = min(b[0] for b in boxes)
    top = min(b[1] for b in boxes)
    right = max(b[0] + b[2] for b in boxes)
    bottom = max(b[1] + b[3] for b in boxes)
    return (left + right) / 2, (top + bottom) / 2
