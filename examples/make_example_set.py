"""Build examples/cat_photos.zip: six photos of one cat, packed the way users pack theirs.

The photo is scikit-image's bundled `chelsea` (CC0, by Stefan van der Walt); the six images
are different crops, sizes and mirrorings of it, with a caption.csv as Replicate's trainer reads.
Run `python examples/make_example_set.py` to rebuild the zip byte for byte.
"""

import csv
import io
import zipfile
from pathlib import Path

from PIL import Image, ImageOps
from skimage import data

ARCHIVE = Path(__file__).with_name("cat_photos.zip")
# (left, top, right, bottom) crops of the 451x300 photo, and whether to mirror it.
VIEWS = [
    ((0, 0, 451, 300), False, "a photo of TOK, a ginger cat looking at the camera"),
    ((80, 0, 380, 300), False, "a photo of TOK, close-up of a cat's face"),
    ((60, 20, 340, 300), True, "a photo of TOK, a cat seen from the other side"),
    ((120, 40, 360, 280), False, "a photo of TOK, a cat's eyes and nose"),
    ((0, 0, 300, 300), True, "a photo of TOK, a cat in a dark room"),
    ((150, 0, 451, 300), False, "a photo of TOK, a tabby cat with whiskers"),
]
FIXED_TIME = (2024, 1, 1, 0, 0, 0)  # fixed member dates keep the zip reproducible


def main() -> None:
    photo = Image.fromarray(data.chelsea())
    captions = io.StringIO()
    writer = csv.writer(captions, lineterminator="\n")
    writer.writerow(["image_file", "caption"])
    with zipfile.ZipFile(ARCHIVE, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, (box, mirror, caption) in enumerate(VIEWS):
            image = photo.crop(box)
            image = ImageOps.mirror(image) if mirror else image
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            name = f"cat_{index:02d}.jpg"
            archive.writestr(zipfile.ZipInfo(name, FIXED_TIME), buffer.getvalue())
            writer.writerow([name, caption])
        archive.writestr(zipfile.ZipInfo("caption.csv", FIXED_TIME), captions.getvalue())


if __name__ == "__main__":
    main()
