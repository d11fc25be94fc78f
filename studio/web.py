"""The studio's HTTP side: the static page (studio/static, no build step, nothing fetched
from elsewhere) and a small JSON API over studio/actions.py. Every answer that failed
carries the message a person can act on, in the server's words where a Cog server said it."""

from __future__ import annotations

import base64
import hmac
import json
import re
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from studio.actions import Studio
from studio.cog_api import CogError
from studio.photos import MAX_UPLOAD_BYTES, PhotoError, safe_name, zip_loose_files

STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# A JSON body holds data URIs of photos (4/3 of their bytes) besides the request.
MAX_BODY_BYTES = MAX_UPLOAD_BYTES * 4 // 3 + 2**20
TOKEN_COOKIE = "studio_token"


class StudioServer(ThreadingHTTPServer):
    daemon_threads = True

    studio: Studio  # set once the bound address, which the studio's URLs name, is known

    def __init__(self, address: tuple[str, int], token: str | None):
        super().__init__(address, StudioHandler)
        self.token = token


class StudioHandler(BaseHTTPRequestHandler):
    server: StudioServer

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # the page shows what matters; request lines would drown the servers' logs

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if method != "GET" and not self._preflighted():
            return self._send_json(403, {"error": "Send JSON, or a file with X-File-Name."})
        if not self._authorised(query):
            return self._send_json(
                401,
                {
                    "error": "This studio needs its token: open the "
                    "address the operator gave you, with ?token=…"
                },
            )
        try:
            for pattern, route in ROUTES.get(method, ()):
                match = re.fullmatch(pattern, url.path)
                if match:
                    return route(self, *match.groups())
            self._send_json(404, {"error": f"Nothing at {url.path}."})
        except (CogError, PhotoError, ValueError) as error:
            self._send_json(400, {"error": str(error)})
        except KeyError as error:
            self._send_json(404, {"error": error.args[0] if error.args else "Not found."})
        except Exception as error:  # the page shows it; the traceback goes to the terminal
            traceback.print_exc()
            self._send_json(500, {"error": f"The studio failed: {type(error).__name__}: {error}"})

    def _preflighted(self) -> bool:
        """Whether a browser would have asked first (CORS) before sending this from another
        site's page: a JSON body or a custom header. The studio answers no such question, so
        another site cannot make a visitor's browser start work here."""
        kind = self.headers.get("Content-Type") or ""
        return kind.startswith("application/json") or "X-File-Name" in self.headers

    def _authorised(self, query: dict) -> bool:
        """With a token set, every request carries it (query, cookie or bearer header); the
        page's first visit with ?token= sets the cookie."""
        token = self.server.token
        if token is None:
            return True
        cookies = dict(
            part.strip().split("=", 1)
            for part in (self.headers.get("Cookie") or "").split(";")
            if "=" in part
        )
        given = (
            (query.get("token") or [None])[0]
            or cookies.get(TOKEN_COOKIE)
            or (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        )
        return bool(given) and hmac.compare_digest(given, token)

    # Answers --------------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise PhotoError(f"The request is over {MAX_BODY_BYTES // 2**20} MiB.")
        return self.rfile.read(length)

    def _json(self) -> dict:
        return json.loads(self._body() or b"{}")

    def _send(self, status: int, data: bytes, kind: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, status: int, body) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    # Routes ---------------------------------------------------------------------------------

    def page(self):
        headers = {}
        token = (parse_qs(urlsplit(self.path).query).get("token") or [None])[0]
        if token:
            headers["Set-Cookie"] = f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
        self._send(200, (STATIC / "index.html").read_bytes(), "text/html", headers)

    def static(self, name):
        path = STATIC / safe_name(name)
        if path.suffix not in STATIC_TYPES or not path.is_file():
            raise KeyError(f"No static file {name}.")
        self._send(200, path.read_bytes(), STATIC_TYPES[path.suffix])

    def status(self):
        self._send_json(200, self.server.studio.status())

    def schema(self, mode):
        server = self.server.studio.predict if mode == "predict" else self.server.studio.train
        self._send_json(200, server.inputs())

    def add_photos(self):
        """A zip as the body, or JSON {files: [{name, data}]} of loose files (data URIs)."""
        if self.headers.get("Content-Type", "").startswith("application/json"):
            form = self._json()
            files = [(f["name"], _data(f["data"])) for f in form["files"]]
            upload, settings = zip_loose_files(files), form.get("settings") or {}
            name = "photos.zip"
        else:
            upload = self._body()
            settings = json.loads(self.headers.get("X-Training-Settings") or "{}")
            name = self.headers.get("X-File-Name") or "photos.zip"
        self._send_json(200, self.server.studio.add_photos(upload, name, settings))

    def photo_file(self, photos, name):
        folder = self.server.studio.data / "photos" / safe_name(photos)
        archive = name.endswith((".zip", ".tar"))  # the upload, or one sent to a training
        path = folder / safe_name(name) if archive else folder / "pictures" / safe_name(name)
        if not path.is_file():
            raise KeyError(f"No file {name}.")
        kind = {".zip": "application/zip", ".tar": "application/x-tar", ".png": "image/png"}
        kind[".jpg"] = "image/jpeg"
        self._send(200, path.read_bytes(), kind.get(path.suffix, "application/octet-stream"))

    def start_training(self):
        form = self._json()
        run = self.server.studio.start_training(form["photos"], form["captions"], form["inputs"])
        self._send_json(200, run)

    def training(self, run_id):
        self._send_json(200, self.server.studio.runs[run_id].view())

    def training_event(self, run_id):
        self.server.studio.training_event(run_id, self._json())
        self._send_json(200, {})

    def cancel_training(self, run_id):
        self._send_json(200, self.server.studio.cancel_training(run_id))

    def models(self):
        self._send_json(200, [vars(m) for m in self.server.studio.models.list()])

    def load_model(self):
        form = self._json()
        url = form.get("url", "")
        if not url.startswith(("https://", "http://")):
            raise PhotoError("Load a model by its http(s) URL: a weights tarball or a LoRA file.")
        model = self.server.studio.models.add_url(form.get("name") or "loaded", url)
        self._send_json(200, vars(model))

    def delete_model(self, name):
        self.server.studio.models.delete(name)
        self._send_json(200, {})

    def model_tarball(self, name):
        path = self.server.studio.models.tarball(name)
        if not path.is_file():
            raise KeyError(f"There is no tarball of {name!r}.")
        disposition = {"Content-Disposition": f'attachment; filename="{path.name}"'}
        self._send(200, path.read_bytes(), "application/x-tar", disposition)

    def model_member(self, name, member):
        data, kind = self.server.studio.models.member(name, member)
        self._send(200, data, kind)

    def generate(self):
        self._send_json(200, self.server.studio.generate(self._json()))

    def gallery(self):
        self._send_json(200, self.server.studio.gallery.list())

    def gallery_file(self, name):
        data, kind = self.server.studio.gallery.image(name)
        self._send(200, data, kind)


def _data(uri: str) -> bytes:
    return base64.b64decode(uri.split(",", 1)[1])


NAME = r"([A-Za-z0-9._-]+)"
ROUTES = {
    "GET": [
        (r"/", StudioHandler.page),
        (rf"/static/{NAME}", StudioHandler.static),
        (r"/api/status", StudioHandler.status),
        (r"/api/schema/(predict|train)", StudioHandler.schema),
        (rf"/api/trainings/{NAME}", StudioHandler.training),
        (r"/api/models", StudioHandler.models),
        (r"/api/gallery", StudioHandler.gallery),
        (rf"/files/photos/{NAME}/{NAME}", StudioHandler.photo_file),
        (rf"/files/models/{NAME}\.tar", StudioHandler.model_tarball),
        (rf"/files/models/{NAME}/(.+)", StudioHandler.model_member),
        (rf"/files/gallery/{NAME}", StudioHandler.gallery_file),
    ],
    "POST": [
        (r"/api/photos", StudioHandler.add_photos),
        (r"/api/trainings", StudioHandler.start_training),
        (rf"/api/trainings/{NAME}/cancel", StudioHandler.cancel_training),
        (rf"/hooks/training/{NAME}", StudioHandler.training_event),
        (r"/api/models", StudioHandler.load_model),
        (r"/api/generate", StudioHandler.generate),
    ],
    "DELETE": [(rf"/api/models/{NAME}", StudioHandler.delete_model)],
}
