"""The model store: every URL or archive the project opens goes through here.

A reference (http(s) URL, data URI, or local archive) becomes an entry on disk:

    $SDXL_TUNER_CACHE/store/<sha256 of the reference>/content/...   the unpacked archive or file
    $SDXL_TUNER_CACHE/store/<key>/entry.json                          what it is; mtime = last use
    $SDXL_TUNER_CACHE/store/locks/<key>.lock                          flock: one builder per key

An entry is built in a staging folder and renamed into place, so it is either complete or
absent; a caller's `read` of the content runs on the staging folder first, so content it
refuses (a pickle, weights of another family, not a bundle, corrupt) is deleted at once
instead of becoming an entry. A new store object (a restarted predictor) finds it again.
Builders of the same key wait on a file lock, so two simultaneous requests for a URL download
it once, in threads and processes alike. Least-recently-used entries are evicted to keep a
minimum of free disk. A builder that was killed leaves its staging folder (a partial download,
a half-unpacked archive) and its lock file; both are swept when a store is created and before
each eviction, once no live process holds the key's lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from weights.archive import (
    ArchiveLimits,
    UnsafeArchiveError,
    archive_format,
    free_disk_bytes,
    unpack_archive,
)
from weights.download import (
    DownloadError,
    DownloadPolicy,
    check_safetensors,
    describe_source,
    download,
    url_file_name,
)
from weights.references import is_remote
from weights.settings import ModelSettings
from weights.trained_files import TrainedWeights, inspect_weights, refuse_pickle

Read = TypeVar("Read")

logger = logging.getLogger(__name__)

ENTRY_FILE = "entry.json"
KEY_LENGTH = 32
KEY = re.compile(f"[0-9a-f]{{{KEY_LENGTH}}}")  # an entry's name: its reference's sha256, cut
CONTENT_DIR = "content"


class StoreError(RuntimeError):
    """A reference could not be turned into usable local files."""


@dataclass(frozen=True)
class Entry:
    key: str
    content: Path  # the unpacked folder, or the single .safetensors file
    hit: bool  # found in the cache rather than fetched now
    value: Any = None  # what the caller's `read` made of the content


@dataclass(frozen=True)
class Eviction:
    evicted: list[str]  # keys of the entries deleted to keep free disk
    swept: list[str]  # what dead builders left: staging folders and unused lock files


class ModelStore:
    def __init__(
        self,
        cache_dir: Path,
        min_free_bytes: int = 5 << 30,
        policy: DownloadPolicy = DownloadPolicy(),
        archive_limits: ArchiveLimits | None = None,
        disk_free: Callable[[Path], int] = free_disk_bytes,
    ):
        self.root = Path(cache_dir) / "store"
        self.min_free_bytes = min_free_bytes
        self.policy = policy
        # Nothing may unpack to more than we would accept to download.
        self.archive_limits = archive_limits or ArchiveLimits(max_total_bytes=policy.max_bytes)
        self.disk_free = disk_free
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        self.sweep()

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> ModelStore:
        return cls(
            settings.cache_dir,
            min_free_bytes=settings.cache_min_free_bytes,
            policy=DownloadPolicy.from_settings(settings),
        )

    # -- what callers ask for ---------------------------------------------------------------

    def trained_weights(
        self,
        reference: str | os.PathLike,
        read: Callable[[TrainedWeights], Read] | None = None,
    ) -> TrainedWeights | Read:
        """Trained weights from a URL, data URI or local path, described by `inspect_weights`
        and handed to `read` (which may raise to refuse them); a download becomes an entry
        only once they were accepted. Without `read`: the `TrainedWeights` themselves."""
        reference = str(reference)
        refuse_pickle(reference)
        source = describe_source(reference)

        def accept(content: Path):
            weights = inspect_weights(content, source=source)
            return read(weights) if read else weights

        if is_remote(reference) or _is_local_archive(reference):
            entry = self.fetch(reference, accept)
            # Without `read`, described again where the entry now lies (not in staging).
            return entry.value if read else inspect_weights(entry.content, source=source)
        content = Path(reference).expanduser()
        if not content.exists():
            raise StoreError(f"{reference}: no such file or folder.")
        return accept(content)

    def diffusers_folder(self, reference: str) -> Path:
        """A diffusers model folder from a URL (or local path) of a tar/zip of one; an archive
        without one never becomes an entry."""

        def model_folder_within(content: Path) -> Path:
            for folder in (content, *sorted(p for p in content.iterdir() if p.is_dir())):
                if (folder / "model_index.json").is_file():
                    return folder.relative_to(content)
            raise StoreError(
                f"{describe_source(reference)} has no model_index.json at its top level: "
                "it is not an archive of a diffusers model folder."
            )

        entry = self.fetch(reference, model_folder_within)
        return entry.content / entry.value

    def fetch(self, reference: str, read: Callable[[Path], Any] | None = None) -> Entry:
        """The cached entry for a URL, data URI or local archive, building it on a miss.
        `read(content)` runs on a hit, and on a miss before the entry exists: if it raises,
        the download is deleted and no entry is made."""
        key = hashlib.sha256(_cache_identity(reference).encode()).hexdigest()[:KEY_LENGTH]
        entry = self.root / key
        with self._lock(key):
            if (entry / ENTRY_FILE).is_file():
                _mark_used(entry)
                logger.info("model store: cache hit for %s", describe_source(reference))
                content = self._content(entry)
                return Entry(key, content, hit=True, value=read(content) if read else None)
            logger.info("model store: cache miss for %s; fetching", describe_source(reference))
            self._remove_stale_staging(key)
            self.evict(keep=key)
            started = time.perf_counter()
            value = self._build(reference, key, read)
            logger.info(
                "model store: stored %s in %.1f s",
                describe_source(reference),
                time.perf_counter() - started,
            )
        self.evict(keep=key)
        return Entry(key, self._content(entry), hit=False, value=value)

    # -- building an entry ------------------------------------------------------------------

    def _build(self, reference: str, key: str, read: Callable[[Path], Any] | None) -> Any:
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            raw = staging / "download"
            if is_remote(reference):
                download(reference, raw, self.policy, check=_check_weights_file)
            else:  # a local archive: unpacked, never moved
                raw = Path(reference).expanduser()
                if not _is_archive(raw):
                    raise StoreError(f"{reference} is not a zip or tar archive.")
            if _is_archive(raw):
                source = describe_source(reference)
                unpack_archive(
                    raw,
                    staging / CONTENT_DIR,
                    self.archive_limits,
                    source=source,
                    disk_free=self.disk_free,
                )
                content = CONTENT_DIR
            else:
                (staging / CONTENT_DIR).mkdir()
                content = f"{CONTENT_DIR}/{_file_name(reference)}"
                os.replace(raw, staging / content)
            (staging / "download").unlink(missing_ok=True)  # the unpacked tree is kept instead
            value = read(staging / content) if read else None
            record = {
                "source": describe_source(reference),
                "content": content,
                "stored_at": time.time(),
            }
            (staging / ENTRY_FILE).write_text(json.dumps(record))
            _mark_used(staging)
            staging.rename(self.root / key)
        except UnsafeArchiveError as error:
            raise StoreError(str(error)) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return value

    def _content(self, entry: Path) -> Path:
        return entry / json.loads((entry / ENTRY_FILE).read_text())["content"]

    def _remove_stale_staging(self, key: str) -> list[str]:
        """Staging folders of this key left by a crash (we hold its lock, so none is live)."""
        stale = list(self.root.glob(f".{key}.*"))
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        return [folder.name for folder in stale]

    # -- eviction and locking ---------------------------------------------------------------

    def entries(self) -> list[Path]:
        """Complete entries, least recently used first."""
        found = []
        for entry in self.root.iterdir():
            try:
                found.append(((entry / ENTRY_FILE).stat().st_mtime_ns, entry))
            except (FileNotFoundError, NotADirectoryError):  # not an entry, or just evicted
                continue
        return [entry for _, entry in sorted(found)]

    def sweep(self) -> list[str]:
        """Remove what killed builders left: staging folders (`.<key>.*`) and the lock files
        of keys without an entry (one per URL ever asked for, otherwise). A key whose lock a
        live builder holds is left alone. Returns the names removed."""
        swept = []
        staged = {p.name[1:].split(".", 1)[0] for p in self.root.glob(".*.*")}
        for key in sorted(k for k in staged if KEY.fullmatch(k)):
            with self._lock(key, wait=False) as locked:
                swept += self._remove_stale_staging(key) if locked else []
        for lock in sorted((self.root / "locks").glob("*.lock")):
            if not KEY.fullmatch(lock.stem):
                continue
            with self._lock(lock.stem, wait=False) as locked:
                if locked and not (self.root / lock.stem / ENTRY_FILE).is_file():
                    lock.unlink()  # while held: a waiter finds it gone and locks a new one
                    swept.append(f"locks/{lock.name}")
        if swept:
            logger.info("model store: removed %d leftovers of interrupted builds", len(swept))
        return swept

    def evict(self, keep: str | None = None) -> Eviction:
        """Sweep (see `sweep`), then delete least-recently-used entries until `min_free_bytes`
        are free. Entries being built or fetched (their lock is held) and `keep` are left
        alone."""
        swept, evicted = self.sweep(), []
        for entry in self.entries():
            if self.disk_free(self.root) >= self.min_free_bytes:
                break
            if entry.name == keep:
                continue
            with self._lock(entry.name, wait=False) as locked:
                if not locked or not (entry / ENTRY_FILE).is_file():
                    continue
                # Rename first: a reader never sees a half-deleted entry as complete.
                doomed = entry.with_name(f".{entry.name}.evicted")
                entry.rename(doomed)
                shutil.rmtree(doomed, ignore_errors=True)
            evicted.append(entry.name)
            logger.info("model store: evicted %s to keep free disk", entry.name)
        if self.disk_free(self.root) < self.min_free_bytes:
            logger.warning(
                "model store: only %.1f GiB free (minimum %.1f GiB) after eviction",
                self.disk_free(self.root) / 2**30,
                self.min_free_bytes / 2**30,
            )
        return Eviction(evicted, swept)

    @contextmanager
    def _lock(self, key: str, wait: bool = True) -> Iterator[bool]:
        """An exclusive flock on the key's lock file; yields False if `wait` is off and the
        lock is held elsewhere. Each call opens its own file, so threads exclude each other.
        A sweep may delete the file while we wait for it: then the lock is taken again on
        the file that now has its name."""
        path = self.root / "locks" / f"{key}.lock"
        while True:
            with open(path, "a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                except BlockingIOError:
                    yield False
                    return
                try:
                    if _names_file(path, handle):
                        yield True
                        return
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)


def _names_file(path: Path, handle) -> bool:
    """Whether `path` still names the open file `handle` (not deleted, not replaced)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(handle.fileno())
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _mark_used(entry: Path) -> None:
    """The entry file's mtime records the last use. Set it from the precise clock: the
    file system's own timestamps are coarse, and ties would make eviction order random."""
    now = time.time_ns()
    os.utime(entry / ENTRY_FILE, ns=(now, now))


def _is_local_archive(reference: str) -> bool:
    path = Path(reference).expanduser()
    return path.is_file() and _is_archive(path)


def _is_archive(path: Path) -> bool:
    """A zip or tar, and not a safetensors file whose tensor bytes happen to contain a zip
    end-of-directory signature (zipfile looks for one near the end of any file)."""
    return archive_format(path) is not None and not _is_safetensors(path)


def _is_safetensors(path: Path) -> bool:
    try:
        check_safetensors(path)
    except DownloadError:
        return False
    return True


def _check_weights_file(path: Path) -> None:
    """What a weights URL may hold: an archive, or one safetensors file."""
    if not (_is_safetensors(path) or _is_archive(path)):
        raise DownloadError(
            "it is neither a zip/tar archive nor a .safetensors file (or it is truncated)"
        )


def _cache_identity(reference: str) -> str:
    """What makes two references the same entry: the URL itself, or for a local archive its
    real path, size and modification time (so an edited file is unpacked again)."""
    if is_remote(reference):
        return reference
    path = Path(reference).expanduser().resolve()
    stat = path.stat()
    return f"file://{path}?size={stat.st_size}&mtime={stat.st_mtime_ns}"


def _file_name(reference: str) -> str:
    """A safe file name for a single downloaded file."""
    name = url_file_name(reference)
    return name if name.endswith(".safetensors") else f"{name or 'weights'}.safetensors"
