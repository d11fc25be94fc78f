"""Build examples/emblem_photos.zip: eight photos of the toy world's emblem (a subject the toy
base has never seen) on varied backgrounds, with a caption.csv, packed the way users pack theirs.
Run `python examples/make_emblem_set.py` to rebuild the zip byte for byte.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toyworld.subject import write_subject_zip  # noqa: E402

ARCHIVE = Path(__file__).with_name("emblem_photos.zip")

if __name__ == "__main__":
    print(write_subject_zip(ARCHIVE, count=8, seed=0))
