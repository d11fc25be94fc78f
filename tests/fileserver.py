"""A real HTTP file server on 127.0.0.1 for tests that fetch URLs.

Each path is a `Route` that says how it misbehaves: serve with or without `Range` support,
cut the connection after some bytes, answer 404, answer an HTML page instead of the file,
redirect elsewhere, or stall before answering. The server counts the requests per path.
It listens on 127.0.0.1 unless told another loopback address (Linux answers on all of
127.0.0.0/8).

    with FileServer() as server:
        url = server.add("/weights.tar", data, ranges=False, drop_after=1000)
        ...
        assert server.requests("/weights.tar") == 2
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from weights.network import AllowList

# The server's address is not public: downloads reach it only through the allow-list.
ALLOWED_HOSTS = "127.0.0.1"  # SDXL_TUNER_ALLOWED_HOSTS for processes that fetch from it
LOCAL = AllowList.parse(ALLOWED_HOSTS)  # DownloadPolicy(allowed=LOCAL) in-process

HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Log in</body></html>"


@dataclass
class Route:
    data: bytes | Path  # a Path is streamed from disk (large benchmark files)
    ranges: bool = True  # advertise and honour `Range: bytes=a-b`
    ignore_range: bool = False  # advertise `Range` support but always send the whole file
    drop_after: int | None = None  # close the connection after this many body bytes ...
    drops: int = 1  # ... for this many responses, then serve normally
    status: int = 200
    content_type: str = "application/octet-stream"
    delay: float = 0.0  # seconds to wait before answering (for timeouts)
    unavailable: int = 0  # answer this many first requests with 503 Service Unavailable
    rate: float | None = None  # bytes per second per connection (a throttling CDN)
    location: str | None = None  # with a 3xx status: where the redirect points

    def size(self) -> int:
        return self.data.stat().st_size if isinstance(self.data, Path) else len(self.data)

    def read(self, start: int, end: int) -> bytes:
        if isinstance(self.data, Path):
            with open(self.data, "rb") as file:
                file.seek(start)
                return file.read(end - start)
        return self.data[start:end]


class FileServer:
    def __init__(self, host: str = "127.0.0.1"):
        self.routes: dict[str, Route] = {}
        self.counts: Counter[str] = Counter()
        self.range_headers: dict[str, list[str | None]] = {}
        self._lock = threading.Lock()
        self._server = _QuietServer((host, 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, path: str, data: bytes | Path, **route_options) -> str:
        """Serve `data` at `path` (see `Route` for the options); returns the URL."""
        self.routes[path] = Route(data, **route_options)
        return self.base_url + path

    def add_html(self, path: str, status: int = 200) -> str:
        """An HTML page where a file was expected (a login or error page)."""
        return self.add(path, HTML_PAGE, status=status, content_type="text/html; charset=utf-8")

    def add_redirect(self, path: str, target: str) -> str:
        """A `302 Found` to `target` (any URL)."""
        return self.add(path, b"", status=302, location=target)

    def url(self, path: str) -> str:
        return self.base_url + path

    def requests(self, path: str) -> int:
        return self.counts[path]

    def start(self) -> FileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _record(self, path: str, range_header: str | None) -> int:
        with self._lock:
            self.counts[path] += 1
            self.range_headers.setdefault(path, []).append(range_header)
            return self.counts[path]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients that hang up are fine
            super().handle_error(request, client_address)


def _handler_for(server: FileServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def do_HEAD(self):
            self._answer(body=False)

        def do_GET(self):
            self._answer(body=True)

        def _answer(self, body: bool):
            path = self.path.split("?")[0]
            number = server._record(path, self.headers.get("Range"))
            route = server.routes.get(path)
            if route is None:
                return self._plain(404, b"not found")
            if route.delay:
                time.sleep(route.delay)
            if number <= route.unavailable:
                return self._plain(503, b"busy, try again")
            if route.status != 200:
                headers = {"Location": route.location} if route.location else {}
                data = route.read(0, route.size())
                return self._plain(route.status, data, route.content_type, headers)

            size = route.size()
            start, end, status = 0, size, 200
            honour = route.ranges and not route.ignore_range
            wanted = _parse_range(self.headers.get("Range"), size) if honour else None
            if wanted is not None:
                start, end, status = wanted[0], wanted[1], 206
            self.send_response(status)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(end - start))
            if route.ranges:
                self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if not body:
                return
            cut = route.drop_after is not None and number <= route.drops
            stop = min(end, start + route.drop_after) if cut else end
            position, started = start, time.perf_counter()
            step = int(min(1 << 20, route.rate / 20)) if route.rate else 1 << 20
            while position < stop:
                chunk = route.read(position, min(stop, position + step))
                self.wfile.write(chunk)
                position += len(chunk)
                if route.rate:  # hold the connection to `rate` bytes per second
                    ahead = (position - start) / route.rate - (time.perf_counter() - started)
                    time.sleep(max(0.0, ahead))
            if cut:
                self.close_connection = True
                try:
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the connection drops mid-file
                except OSError:
                    pass  # the client hung up first

        def _plain(self, status: int, data: bytes, content_type="text/plain", headers=None):
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`bytes=a-b` or `bytes=a-` to a half-open [start, end) range; None to send everything."""
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", header or "")
    if not match:
        return None
    start = int(match.group(1))
    end = int(match.group(2)) + 1 if match.group(2) else size
    if start >= size:
        return None
    return start, min(end, size)
