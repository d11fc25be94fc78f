"""What the page can do, each through the Cog servers' own inputs: review photos (a dry run),
train (an async training followed by its webhooks), generate (predictions, also side by side
and over LoRA scales), and keep the results (studio/library.py)."""

from __future__ import annotations

import base64
import json
import random
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

from formats.progress import read_progress
from serving.client import failure_text
from studio.cog_api import CogError, CogServer
from studio.library import Gallery, Models
from studio.photos import (
    PhotoError,
    check_upload_size,
    read_review,
    upload_name,
    with_captions,
)

# How many recent steps the time left is averaged over.
RECENT_STEPS = 20
# LoRA scales of the strip when the page names none.
DEFAULT_SCALES = (0.0, 0.5, 1.0)
MAX_STRIP = 6
FILE_INPUTS = ("image", "mask")
# File inputs the studio fills in itself (from its models and photos): a page's request never
# names them, so it can name neither a server path nor another server's file.
STUDIO_FILLED = {
    "predict": ("replicate_weights", "extra_lora", "loras"),
    "train": ("input_images", "resume_from", "dry_run"),
}


@dataclass
class TrainingRun:
    """One training as its webhooks tell it."""

    id: str
    name: str
    photos: str
    inputs: dict
    status: str = "starting"
    call_id: str | None = None
    error: str | None = None
    model: str | None = None  # the model it became
    steps: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def view(self) -> dict:
        """What the page shows: step / total, time left, loss curve, samples."""
        row = asdict(self)
        last = self.steps[-1] if self.steps else None
        recent = [s["seconds"] for s in self.steps[-RECENT_STEPS:]]
        row["step"], row["total"] = (last["step"], last["total"]) if last else (0, None)
        row["seconds_left"] = (
            round((last["total"] - last["step"]) * sum(recent) / len(recent), 1) if last else None
        )
        return row


class Studio:
    """The page's operations over one pair of Cog servers; files under `data`. `public_url`:
    the studio's address as the servers reach it (their webhooks and file downloads);
    `token`: appended to those addresses when the studio requires one; `base_models`: the
    family a training may pick, as the `base_model` it names."""

    def __init__(
        self,
        predict: CogServer,
        train: CogServer,
        data: Path,
        public_url: str,
        token: str | None = None,
        price_per_gpu_hour: float | None = None,
        base_models: dict[str, str] | None = None,
    ):
        self.predict, self.train = predict, train
        self.data, self.public_url, self.token = data, public_url.rstrip("/"), token
        self.price_per_gpu_hour = price_per_gpu_hour
        self.base_models = base_models or {}  # family title -> `base_model` to train on
        self.models = Models(data / "models")
        self.gallery = Gallery(data / "gallery")
        self.runs: dict[str, TrainingRun] = {}
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        """An address of the studio as the Cog servers reach it."""
        suffix = f"?token={quote(self.token)}" if self.token else ""
        return f"{self.public_url}/{path.lstrip('/')}{suffix}"

    def status(self) -> dict:
        return {
            "predict": {"url": self.predict.url, "status": self.predict.health()["status"]},
            "train": {"url": self.train.url, "status": self.train.health()["status"]},
            "price_per_gpu_hour": self.price_per_gpu_hour,
            "base_models": self.base_models,
        }

    # Photos -------------------------------------------------------------------------------

    def add_photos(self, upload: bytes, name: str, settings: dict) -> dict:
        """Store an upload (a zip or tar named `name`) and review it with a dry run of the
        training `settings`."""
        check_upload_size(upload)
        refuse_filled(settings, "train")
        photos, name = uuid.uuid4().hex[:12], upload_name(name)
        folder = self.data / "photos" / photos
        folder.mkdir(parents=True)
        (folder / name).write_bytes(upload)
        inputs = {**settings, "input_images": self.url(f"files/photos/{photos}/{name}")}
        try:
            response = self.train.run({**inputs, "dry_run": True})
        except CogError:
            shutil.rmtree(folder)  # a refused upload leaves nothing behind
            raise
        review = read_review(_decoded(response["output"]), folder / "pictures")
        review |= {"photos": photos, "upload": name, "estimate": self._estimate(review)}
        (folder / "review.json").write_text(json.dumps(review))
        return review

    def _estimate(self, review: dict) -> dict:
        seconds = review["estimated_training_seconds"] + review["model_load_and_caching_seconds"]
        price = self.price_per_gpu_hour
        return {"seconds": seconds, "price": None if price is None else seconds / 3600 * price}

    # Training -----------------------------------------------------------------------------

    def start_training(self, photos: str, captions: dict[str, str], inputs: dict) -> dict:
        """Train on the photos `photos` with the captions as edited in the page."""
        refuse_filled(inputs, "train")
        folder = self.data / "photos" / _plain(photos)
        if not (folder / "review.json").is_file():
            raise PhotoError(f"There are no photos {photos!r}: upload them again.")
        upload = folder / json.loads((folder / "review.json").read_text())["upload"]
        run = TrainingRun(uuid.uuid4().hex[:12], inputs.pop("name", "") or "model", photos, inputs)
        sent_zip = folder / f"train-{run.id}.zip"
        sent_zip.write_bytes(with_captions(upload.read_bytes(), captions))
        sent = {**inputs, "input_images": self.url(f"files/photos/{photos}/{sent_zip.name}")}
        with self.lock:
            self.runs[run.id] = run
        try:
            accepted = self.train.start(sent, webhook=self.url(f"hooks/training/{run.id}"))
        except CogError:  # refused: nothing of it is kept
            del self.runs[run.id]
            sent_zip.unlink()
            raise
        run.call_id = accepted["id"]
        return run.view()

    def training_event(self, run_id: str, event: dict) -> None:
        """One webhook event of a training: its whole log so far, and at the end its output."""
        run = self.runs.get(run_id)
        if run is None:
            return
        progress = read_progress(event.get("logs") or "")
        run.steps, run.samples = progress.steps, progress.samples
        status = event.get("status", run.status)
        if status == "succeeded" and run.model is None:
            model = self.models.add_tarball(run.name, _decoded(event["output"]), run.inputs)
            run.model = model.name
        elif status == "failed":
            run.error = failure_text(event, 200)
        run.status = status

    def cancel_training(self, run_id: str) -> dict:
        run = self.runs[run_id]
        if run.call_id is not None and run.status in ("starting", "processing"):
            self.train.cancel(run.call_id)
        return run.view()

    # Generation ---------------------------------------------------------------------------

    def generate(self, form: dict) -> list[dict]:
        """One prediction, or a comparison: `compare` "base" runs the same request (same
        seed) with and without the fine-tune, "scales" once per LoRA scale."""
        inputs = self._prediction_inputs(form)
        compare = form.get("compare") or "none"
        if compare != "none" and inputs.get("seed") is None:
            inputs["seed"] = random.randrange(2**31)  # one seed makes the images comparable
        variants = [(form.get("model") or "base", inputs)]
        if compare == "base":
            base = {k: v for k, v in inputs.items() if k not in ("replicate_weights", "lora_scale")}
            variants = [("base", base), *variants]
        elif compare == "scales":
            scales = [float(s) for s in form.get("scales") or DEFAULT_SCALES][:MAX_STRIP]
            variants = [(f"scale {s:g}", {**inputs, "lora_scale": s}) for s in scales]
        entries = []
        for label, request in variants:
            response = self.predict.run(request)
            for output in response["output"]:
                entries.append(self.gallery.add(output, request, label))
        return entries

    def _prediction_inputs(self, form: dict) -> dict:
        """The request a Replicate client would send: models and drawn images become URLs of
        the studio, never server paths."""
        inputs = dict(form.get("inputs") or {})
        refuse_filled(inputs, "predict")
        for name in FILE_INPUTS:
            if inputs.get(name):
                inputs[name] = self._keep_input_image(inputs[name])
        if form.get("model"):
            inputs["replicate_weights"] = self.model_url(form["model"])
        if form.get("extra_lora"):
            inputs["extra_lora"] = self.model_url(form["extra_lora"])
        return {k: v for k, v in inputs.items() if v is not None and v != ""}

    def model_url(self, name: str) -> str:
        model = self.models.get(name)
        return model.url or self.url(f"files/models/{model.name}.tar")

    def _keep_input_image(self, data_uri: str) -> str:
        """An uploaded or drawn image, kept in the gallery and sent as its URL."""
        if not data_uri.startswith("data:image/png;base64,"):
            raise CogError("Images and masks are sent from the page as PNG.")
        name = f"input-{uuid.uuid4().hex[:12]}.png"
        (self.gallery.folder / name).write_bytes(base64.b64decode(data_uri.split(",", 1)[1]))
        return self.url(f"files/gallery/{name}")


def refuse_filled(inputs: dict, mode: str) -> None:
    named = [name for name in STUDIO_FILLED[mode] if name in inputs]
    if named:
        raise CogError(
            f"The studio sets {', '.join(named)} itself: choose a model from its list (load "
            "one by URL under Models) or upload the photos."
        )


def _decoded(output) -> bytes:
    """A file output of Cog (a data URI; a training's may sit under `weights`)."""
    if isinstance(output, dict):
        output = output["weights"]
    return base64.b64decode(output.split(",", 1)[1])


def _plain(name: str) -> str:
    if not name.isalnum():
        raise PhotoError(f"{name!r} is not a photo set of the studio.")
    return name
