"""A local HTTP receiver on 127.0.0.1 that records what Cog's server sends it: webhook
events (POST) and uploaded output files (PUT)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    webhooks: list[dict] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)


class Receiver:
    def __init__(self):
        self.received = Received()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self):  # webhook events
                received.webhooks.append(json.loads(self._body()))
                self.send_response(200)
                self.end_headers()

            def do_PUT(self):  # uploaded outputs; answer with the file's URL
                received.uploads[self.path] = self._body()
                self.send_response(201)
                self.send_header("Location", f"http://{self.headers['Host']}{self.path}")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
