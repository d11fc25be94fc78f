"""Download one URL to one local file, safely.

The body streams into a temporary file beside the destination, is checked, and only then
renamed into place: a crash, a dropped connection or a bad answer never leaves a half file
under the final name. A dropped connection is retried and resumed with `Range` when the
server supports it; large files from such servers are fetched in parallel ranges (as pget
does). Data URIs are decoded through the same path, so callers need not care which it was.
Every connection, redirects included, goes only to public addresses or the operator's
allow-list (weights/network.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3.exceptions
from tqdm import tqdm

from weights.network import ALLOWED_HOSTS_VARIABLE, AddressRefused, AllowList, checked_session
from weights.references import has_scheme
from weights.settings import ModelSettings
from weights.trained_files import refuse_pickle

logger = logging.getLogger(__name__)

HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")
MAX_SAFETENSORS_HEADER = 100 << 20
RETRY_STATUSES = (429, 500, 502, 503, 504)
HTML_MESSAGE = (
    "{source} answered with an HTML page instead of the file (a login, error or download "
    "page). Use a direct download link to the file itself."
)
# The same words for every refused URL, whatever is (or is not) at the address.
REFUSED_MESSAGE = (
    "{source} is refused: its host, or a redirect from it, is a loopback, private, link-local "
    "or other non-public address, which requests may not name. (A self-hosted server can "
    f"allow hosts with {ALLOWED_HOSTS_VARIABLE}.)"
)


class DownloadError(RuntimeError):
    """A URL could not be fetched, or what came back is not the file that was asked for."""


@dataclass(frozen=True)
class DownloadPolicy:
    max_bytes: int = 20 << 30  # refuse anything larger
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # seconds without a byte before giving up on a connection
    retries: int = 5  # attempts after a dropped connection, per stream
    retry_wait: float = 0.5  # first pause between attempts; doubles each time
    parallel_min_bytes: int = 64 << 20  # files at least this large use parallel ranges ...
    parallel_parts: int = 8  # ... split into this many parts
    chunk_bytes: int = 1 << 20
    progress: bool = True
    allowed: AllowList = AllowList()  # non-public hosts it may reach; none by default

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> DownloadPolicy:
        return cls(max_bytes=settings.max_download_bytes, allowed=settings.allowed_hosts)


@dataclass(frozen=True)
class Download:
    path: Path
    size: int
    ranged: bool  # fetched as parallel ranges


def download(
    url: str,
    destination: Path,
    policy: DownloadPolicy = DownloadPolicy(),
    check: Callable[[Path], None] | None = None,
) -> Download:
    """Fetch an http(s) URL or data URI to `destination`; `check(temp_file)` may raise to
    reject the content before it is renamed into place."""
    destination = Path(destination)
    refuse_pickle(url)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        if has_scheme(url, "data:"):
            result = Download(temp, _decode_data_uri(url, temp, policy), ranged=False)
        else:
            result = _HttpFetch(url, temp, policy).run()
        reject_html(temp, url)
        if check is not None:
            try:
                check(temp)
            except DownloadError as error:
                raise DownloadError(f"{describe_source(url)} is not usable: {error}.") from None
        os.replace(temp, destination)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return Download(destination, result.size, result.ranged)


def reject_html(path: Path, url: str) -> None:
    with open(path, "rb") as file:
        start = file.read(512).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith(HTML_STARTS):
        raise DownloadError(HTML_MESSAGE.format(source=describe_source(url)))


def check_safetensors(path: Path) -> None:
    """Parse the header of a safetensors file and check that every tensor lies inside it."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        header_size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
        if not 0 < header_size <= min(MAX_SAFETENSORS_HEADER, size - 8):
            raise DownloadError("it is not a safetensors file (bad header length)")
        try:
            header = json.loads(file.read(header_size))
            ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        except (UnicodeDecodeError, ValueError, AttributeError, KeyError, TypeError, IndexError):
            raise DownloadError("it is not a safetensors file (unreadable header)") from None
    if 8 + header_size + max(ends, default=0) != size:
        raise DownloadError("it is a truncated safetensors file (its header says otherwise)")


class _HttpFetch:
    """One download: a first request that also learns the size and `Range` support, then
    either parallel ranges or one resumable stream."""

    def __init__(self, url: str, temp: Path, policy: DownloadPolicy):
        if not has_scheme(url, "http://", "https://"):
            raise DownloadError(f"{url!r} is not an http(s) URL or data URI.")
        self.url, self.temp, self.policy = url, temp, policy
        self.name = describe_source(url)
        self.timeout = (policy.connect_timeout, policy.read_timeout)
        self.local = threading.local()
        self.progress: tqdm | None = None
        self.progress_lock = threading.Lock()

    def run(self) -> Download:
        response = self._get({})
        size = _content_length(response)
        self._check_answer(response, size)
        ranges = response.headers.get("Accept-Ranges", "").lower() == "bytes"
        self.progress = tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=Path(urllib.parse.urlparse(self.url).path).name or "download",
            disable=not self.policy.progress or None,
            leave=False,
        )
        try:
            parallel = (
                ranges
                and size is not None
                and size >= self.policy.parallel_min_bytes
                and self.policy.parallel_parts > 1
            )
            if parallel:
                response.close()
                try:
                    self._parallel(size)
                except _RangesRefused:
                    logger.warning("%s: ranges refused; downloading as one stream", self.name)
                    parallel = False
                    self.progress.reset()
                    self._stream(self._get({}), size, ranges=False)
            else:
                self._stream(response, size, ranges)
        finally:
            self.progress.close()
        return Download(self.temp, self.temp.stat().st_size, ranged=parallel)

    def _check_answer(self, response: requests.Response, size: int | None) -> None:
        """Refuse before reading the body: HTML pages, files over the limit or the disk."""
        problem = None
        if response.headers.get("Content-Type", "").startswith("text/html"):
            problem = HTML_MESSAGE.format(source=self.name)
        elif size is not None and size > self.policy.max_bytes:
            problem = (
                f"{self.name} is {size / 2**20:.0f} MiB, over the "
                f"{self.policy.max_bytes / 2**20:.0f} MiB limit."
            )
        elif size is not None and size > shutil.disk_usage(self.temp.parent).free:
            problem = (
                f"{self.name} is {size / 2**30:.1f} GiB, more than the free space "
                f"on {self.temp.parent}."
            )
        if problem:
            response.close()
            raise DownloadError(problem)

    def _session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = checked_session(self.policy.allowed)
        return self.local.session

    def _get(self, headers: dict[str, str]) -> requests.Response:
        """One request; overloaded servers (429, 5xx) are asked again after a pause."""
        for attempt in range(self.policy.retries + 1):
            response = self._request(headers)
            if response.status_code not in RETRY_STATUSES or attempt == self.policy.retries:
                break
            response.close()
            logger.warning("%s: HTTP %d; retrying", self.name, response.status_code)
            time.sleep(self.policy.retry_wait * 2**attempt)
        if response.status_code >= 400:
            response.close()
            hint = {
                401: "the URL needs credentials",
                403: "access is denied (an expired or private link?)",
                404: "no file at that URL: check it for typos",
                410: "the file was removed",
            }.get(response.status_code, "the server refused the request")
            raise DownloadError(
                f"{self.name} answered HTTP {response.status_code} {response.reason}: {hint}."
            )
        return response

    def _request(self, headers: dict[str, str]) -> requests.Response:
        try:
            return self._session().get(self.url, headers=headers, stream=True, timeout=self.timeout)
        except AddressRefused:
            raise DownloadError(REFUSED_MESSAGE.format(source=self.name)) from None
        except requests.exceptions.TooManyRedirects:
            raise DownloadError(f"{self.name} redirects too many times.") from None
        except (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL):
            raise DownloadError(f"{self.name} redirects to something not an http(s) URL.") from None
        except requests.exceptions.ConnectTimeout:
            raise DownloadError(
                f"Connecting to {_host(self.url)} timed out after "
                f"{self.policy.connect_timeout:g} s (fetching {self.name})."
            ) from None
        except requests.exceptions.ReadTimeout:
            raise DownloadError(
                f"{_host(self.url)} did not answer within {self.policy.read_timeout:g} s "
                f"(fetching {self.name})."
            ) from None
        except requests.exceptions.ConnectionError as error:
            raise DownloadError(
                f"Could not reach {_host(self.url)} (fetching {self.name}): "
                f"{_reason(error)}. Check the URL and the network."
            ) from None

    def _stream(self, response: requests.Response, size: int | None, ranges: bool) -> None:
        """One stream; after a drop, resume from the last byte (or restart without `Range`)."""
        written, failures = 0, 0
        with open(self.temp, "wb") as sink:
            while True:
                try:
                    for chunk in response.iter_content(self.policy.chunk_bytes):
                        sink.write(chunk)
                        written += len(chunk)
                        self._advance(len(chunk))
                        self._check_limit(written)
                    if size is None or written == size:
                        return
                    problem = f"the connection closed after {written} of {size} bytes"
                except _DROPS as error:
                    problem = _reason(error)
                finally:
                    response.close()
                failures += 1
                self._back_off(failures, problem)
                if ranges and written:
                    response = self._get({"Range": f"bytes={written}-"})
                    if response.status_code == 206 and _range_start(response) == written:
                        continue
                    response.close()
                response = self._get({})  # start over
                sink.seek(0)
                sink.truncate()
                self._advance(-written)
                written = 0

    def _parallel(self, size: int) -> None:
        with open(self.temp, "wb") as sink:
            sink.truncate(size)
        parts = self.policy.parallel_parts
        bounds = [size * i // parts for i in range(parts + 1)]
        fd = os.open(self.temp, os.O_WRONLY)
        try:
            with ThreadPoolExecutor(parts, thread_name_prefix="download") as pool:
                jobs = [
                    pool.submit(self._part, fd, a, b)
                    for a, b in zip(bounds, bounds[1:], strict=False)
                ]
                for job in jobs:
                    job.result()
        finally:
            os.close(fd)

    def _part(self, fd: int, start: int, end: int) -> None:
        """Fetch bytes [start, end) into `fd`, resuming after drops."""
        position, failures = start, 0
        while position < end:
            response = self._get({"Range": f"bytes={position}-{end - 1}"})
            try:
                if response.status_code != 206 or _range_start(response) != position:
                    raise _RangesRefused()
                for chunk in response.iter_content(self.policy.chunk_bytes):
                    chunk = chunk[: end - position]
                    os.pwrite(fd, chunk, position)
                    position += len(chunk)
                    self._advance(len(chunk))
                if position >= end:
                    return
                problem = f"range closed at byte {position} of [{start}, {end})"
            except _DROPS as error:
                problem = _reason(error)
            finally:
                response.close()
            failures += 1
            self._back_off(failures, problem)

    def _back_off(self, failures: int, problem: str) -> None:
        """After the `failures`-th failed attempt: give up past the retry budget, else wait
        (exponentially longer each time) before the next."""
        if failures > self.policy.retries:
            raise DownloadError(
                f"Download of {self.name} failed {failures} times; last: {problem}."
            )
        logger.warning("%s: %s; retrying (%d)", self.name, problem, failures)
        time.sleep(self.policy.retry_wait * 2 ** (failures - 1))

    def _advance(self, count: int) -> None:
        with self.progress_lock:
            self.progress.update(count)

    def _check_limit(self, written: int) -> None:
        if written > self.policy.max_bytes:
            raise DownloadError(
                f"{self.name} is larger than the "
                f"{self.policy.max_bytes / 2**20:.0f} MiB limit; stopped."
            )


class _RangesRefused(Exception):
    """The server advertised byte ranges but answered a ranged request with something else."""


_DROPS = (
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
)


def _decode_data_uri(uri: str, target: Path, policy: DownloadPolicy) -> int:
    header, comma, payload = uri.partition(",")
    if not comma:
        raise DownloadError("Malformed data URI: no ',' between its header and its data.")
    if len(payload) * 3 // 4 > policy.max_bytes:
        raise DownloadError(f"The data URI is over the {policy.max_bytes / 2**20:.0f} MiB limit.")
    try:
        if header.lower().endswith(";base64"):
            data = base64.b64decode(payload, validate=True)
        else:
            data = urllib.parse.unquote_to_bytes(payload)
    except binascii.Error as error:
        raise DownloadError(f"The data URI is not valid base64: {error}.") from None
    target.write_bytes(data)
    return len(data)


def _content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None or "Content-Encoding" in response.headers:
        return None
    return int(value)


def _range_start(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Range", "")  # "bytes 100-199/1000"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _host(url: str) -> str:
    return urllib.parse.urlparse(url).netloc or url


def describe_source(reference: str) -> str:
    """A URL or path for messages and logs: no query string (signed URLs carry secrets
    there), and no data URI's payload."""
    if has_scheme(reference, "data:"):
        return f"a data URI ({len(reference)} characters)"
    if has_scheme(reference, "http://", "https://"):
        parts = urllib.parse.urlparse(reference)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"
    return reference


def url_file_name(reference: str) -> str:
    """The last segment of a URL's path, safe as a file name ("" for a data URI or a URL
    without one)."""
    if not has_scheme(reference, "http://", "https://"):
        return ""
    name = Path(urllib.parse.urlparse(reference).path).name
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".")[:100]


def _reason(error: BaseException) -> str:
    """Why a connection failed, in words: the operating system's reason (connection refused,
    no route to host, ...) rather than urllib3's wrapping of it."""
    if isinstance(error, requests.exceptions.ConnectionError) and error.args:
        error = getattr(error.args[0], "reason", None) or error  # urllib3's MaxRetryError
    if isinstance(error, urllib3.exceptions.NameResolutionError):
        return "its host name does not resolve"
    if isinstance(error, urllib3.exceptions.SSLError):
        return "the TLS handshake failed (is the certificate valid for this host?)"
    while error is not None:
        if isinstance(error, OSError) and error.strerror:
            return error.strerror.lower()
        if "timed out" in str(error):
            return "timed out"
        error = error.__cause__ or error.__context__
    return "the connection broke off"
