"""`preview.png`: a contact sheet of the crops, masked-out parts dimmed, captions below."""

from __future__ import annotations

import math
import textwrap

from PIL import Image, ImageDraw, ImageFont, ImageOps

TILE = 256
CAPTION_LINES = 4
LINE_HEIGHT = 14
MAX_COLUMNS = 5
DIM = (0, 0, 0)  # what a mask value of 0 fades towards
MASKED_VISIBLE = 60  # of 255: how much of a masked-out pixel still shows


def contact_sheet(tiles: list[tuple[Image.Image, Image.Image, str]]) -> Image.Image:
    """`tiles` are (crop, mask, caption); returns one RGB sheet."""
    columns = max(1, min(MAX_COLUMNS, math.ceil(math.sqrt(len(tiles)))))
    rows = max(1, math.ceil(len(tiles) / columns))
    cell_h = TILE + CAPTION_LINES * LINE_HEIGHT + 8
    sheet = Image.new("RGB", (columns * TILE, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for index, (crop, mask, caption) in enumerate(tiles):
        left, top = (index % columns) * TILE, (index // columns) * cell_h
        sheet.paste(_masked_thumbnail(crop, mask), (left, top))
        lines = textwrap.wrap(caption, width=40)[:CAPTION_LINES]
        for line_no, line in enumerate(lines):
            draw.text((left + 4, top + TILE + 4 + line_no * LINE_HEIGHT), line, "black", font)
    return sheet


def _masked_thumbnail(crop: Image.Image, mask: Image.Image) -> Image.Image:
    thumb = ImageOps.contain(crop, (TILE, TILE), Image.Resampling.LANCZOS)
    alpha = mask.resize(thumb.size, Image.Resampling.BILINEAR)
    # Keep a little of the image visible where the mask is zero, so the context still shows.
    alpha = alpha.point(lambda v: MASKED_VISIBLE + v * (255 - MASKED_VISIBLE) // 255)
    tile = Image.new("RGB", (TILE, TILE), "white")
    shown = Image.composite(thumb, Image.new("RGB", thumb.size, DIM), alpha)
    tile.paste(shown, ((TILE - thumb.width) // 2, (TILE - thumb.height) // 2))
    return tile
