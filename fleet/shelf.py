"""Where cluster trainings put their tarballs, and the URL the serving replicas fetch them at.

On a real cluster the folder is storage every training node writes (a shared volume, or a
bucket mounted on each node) and `base_url` is where the same files are served over HTTP(S)
(the bucket's public or signed URL, a CDN, a file server); docs/fleet.md shows both. On a
local cluster `serve_folder` serves the folder on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from formats.bundle import BUNDLE_FILE


@dataclass(frozen=True)
class TarballShelf:
    folder: Path  # written by every training node
    base_url: str  # the folder as the serving replicas reach it, e.g. https://bucket/tarballs

    def publish(self, tarball: Path, name: str) -> str:
        """Copy `tarball` to `<folder>/<name>/trained_model.tar` (complete or not at all:
        written under a temporary name, then renamed) and return its URL."""
        target = self.folder / name / BUNDLE_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{BUNDLE_FILE}.partial")
        shutil.copyfile(tarball, partial)
        partial.replace(target)
        return f"{self.base_url.rstrip('/')}/{name}/{BUNDLE_FILE}"

    def withdraw(self, name: str) -> None:
        """Remove what `publish` wrote under `name` (a training cancelled as it finished)."""
        shutil.rmtree(self.folder / name, ignore_errors=True)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


@contextlib.contextmanager
def serve_folder(folder: Path, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `folder` over HTTP (a local cluster's shelf); yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
