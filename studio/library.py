"""What the studio keeps between visits, in its data folder: trained models (the tarballs
trainings returned, or a URL of someone else's) and the gallery (each image with the exact
request that made it)."""

from __future__ import annotations

import base64
import json
import tarfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from formats.bundle import LOSS_PLOT_FILE, MODEL_CARD_FILE, SAMPLES_DIR, TRAINING_CONFIG_FILE
from studio.photos import safe_name

# Members of a tarball the page may show: its card, record, loss plot and samples.
SHOWN_MEMBERS = (MODEL_CARD_FILE, TRAINING_CONFIG_FILE, LOSS_PLOT_FILE)
IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass
class Model:
    name: str
    created: float
    inputs: dict = field(default_factory=dict)  # the training's inputs, as sent
    url: str | None = None  # a model loaded by URL; None: the tarball is in the library
    size: int = 0
    trigger: str | None = None
    samples: list[str] = field(default_factory=list)  # sample image members of the tarball


class Models:
    """models/<name>.tar (the tarball) and models/<name>.json (what the page lists)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def add_tarball(self, name: str, tarball: bytes, inputs: dict) -> Model:
        name = self._unused(name)
        partial = self.folder / f".{name}.tar.partial"
        partial.write_bytes(tarball)
        with tarfile.open(partial) as tar:
            names = tar.getnames()
            record = json.load(tar.extractfile(TRAINING_CONFIG_FILE))
        samples = sorted(n for n in names if n.startswith(f"{SAMPLES_DIR}/") and _image_type(n))
        trigger = record.get("trigger_word")
        model = Model(name, time.time(), inputs, None, len(tarball), trigger, samples)
        partial.rename(self.tarball(name))
        self._write(model)
        return model

    def add_url(self, name: str, url: str) -> Model:
        model = Model(self._unused(name), time.time(), url=url)
        self._write(model)
        return model

    def list(self) -> list[Model]:
        found = [self.get(path.stem) for path in self.folder.glob("*.json")]
        return sorted(found, key=lambda m: m.created, reverse=True)

    def get(self, name: str) -> Model:
        path = self.folder / f"{safe_name(name)}.json"
        if not path.is_file():
            raise KeyError(f"There is no model {name!r} in the studio.")
        return Model(**json.loads(path.read_text()))

    def tarball(self, name: str) -> Path:
        return self.folder / f"{safe_name(name)}.tar"

    def member(self, name: str, member: str) -> tuple[bytes, str]:
        """One shown member of a model's tarball, and its content type."""
        model = self.get(name)
        if member not in SHOWN_MEMBERS and member not in model.samples:
            raise KeyError(f"{member} is not shown from a tarball.")
        with tarfile.open(self.tarball(name)) as tar:
            info = tar.getmember(member)
            if not info.isfile():
                raise KeyError(f"{member} is not a file.")
            data = tar.extractfile(info).read()
        kind = _image_type(member) or ("application/json" if member.endswith(".json") else "")
        return data, kind or "text/plain; charset=utf-8"

    def delete(self, name: str) -> None:
        self.get(name)
        self.tarball(name).unlink(missing_ok=True)
        (self.folder / f"{safe_name(name)}.json").unlink()

    def _unused(self, name: str) -> str:
        base = safe_name(name, "model")
        name, number = base, 2
        while (self.folder / f"{name}.json").exists():
            name, number = f"{base}-{number}", number + 1
        return name

    def _write(self, model: Model) -> None:
        path = self.folder / f"{model.name}.json"
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(asdict(model)))
        partial.rename(path)


def _image_type(name: str) -> str | None:
    return IMAGE_TYPES.get(name.rsplit(".", 1)[-1].lower())


class Gallery:
    """gallery/<id>.<ext> and gallery.jsonl: one line per image, the newest last."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.index = folder / "gallery.jsonl"
        self.lock = threading.Lock()

    def add(self, data_uri: str, request: dict, label: str) -> dict:
        """Keep one output image (a data URI from the predict server) with its request."""
        header, encoded = data_uri.split(",", 1)
        extension = header.removeprefix("data:image/").split(";")[0]
        if extension not in IMAGE_TYPES:
            raise ValueError(f"The server returned an unexpected output: {header}.")
        entry = {"id": uuid.uuid4().hex[:12], "label": label, "request": request}
        entry["file"] = f"{entry['id']}.{extension}"
        (self.folder / entry["file"]).write_bytes(base64.b64decode(encoded))
        with self.lock, self.index.open("a") as index:
            index.write(json.dumps(entry) + "\n")
        return entry

    def list(self, limit: int = 500) -> list[dict]:
        if not self.index.is_file():
            return []
        lines = self.index.read_text().splitlines()[-limit:]
        return [json.loads(line) for line in reversed(lines)]

    def image(self, file: str) -> tuple[bytes, str]:
        path = self.folder / safe_name(file)
        kind = _image_type(path.name)
        if kind is None or not path.is_file():
            raise KeyError(f"There is no image {file!r} in the gallery.")
        return path.read_bytes(), kind
