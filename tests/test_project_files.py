"""Project files users and CI rely on: the example set and the Cog build config."""

import csv
import io
import zipfile
from pathlib import Path

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_example_set_is_a_zip_of_photos_with_matching_captions():
    with zipfile.ZipFile(ROOT / "examples" / "cat_photos.zip") as archive:
        images = [n for n in archive.namelist() if n.endswith(".jpg")]
        rows = list(csv.DictReader(io.StringIO(archive.read("caption.csv").decode())))
        for name in images:
            Image.open(io.BytesIO(archive.read(name))).verify()
    assert len(images) >= 5
    assert sorted(row["image_file"] for row in rows) == sorted(images)
    assert all("TOK" in row["caption"] for row in rows)


def test_cog_yaml_installs_the_no_deps_packages_pinned_in_requirements():
    config = yaml.safe_load((ROOT / "cog.yaml").read_text())
    pinned = {
        line.strip()
        for line in (ROOT / "requirements-nodeps.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    installs = [cmd for cmd in config["build"]["run"] if "--no-deps" in cmd]
    assert len(installs) == 1 and set(installs[0].split()[3:]) == pinned
    assert config["predict"] == "predict.py:Predictor"
    assert config["build"]["gpu"] is True
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text()
