"""Safe extraction of zip and tar archives (user datasets and weight bundles alike).

Every member is checked before anything is written: no absolute paths, no `..`, no links or
device files, bounded member count and unpacked size. The size is bounded three ways: a limit,
the free disk, and the compression ratio (what the members declare over the archive's own
size: a compression bomb declares a thousand times more). Listing a compressed tar
decompresses it, so that decompression stops as soon as it passes the bound, and a member
that holds more than it declared stops as soon as it does. Extraction goes to a staging
folder that is renamed into place, so a failure never leaves a half-unpacked tree behind.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

COPY_CHUNK = 1 << 20
# What a tar member takes besides its data: its header block, the padding of its data to a
# block, and a long-name header.
TAR_MEMBER_OVERHEAD = 2048
DECOMPRESSORS = {b"\x1f\x8b": gzip.GzipFile, b"BZh": bz2.BZ2File, b"\xfd7zXZ\x00": lzma.LZMAFile}


class UnsafeArchiveError(ValueError):
    """The archive is corrupt, hostile, or larger than allowed; nothing was extracted."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 10_000
    max_total_bytes: int = 4 << 30
    # Unpacked bytes per archive byte. Photos, safetensors weights and model folders hardly
    # compress (1-2x); a FLUX.1 LoRA tarball gzips to 1.4x, and to 6.4x when one part of
    # each fused layer trained alone (its BFL export then mostly zero blocks). A bomb is far
    # above: deflate reaches 1000x, bzip2 more. 100x leaves wide room for real archives.
    max_ratio: float = 100.0
    # Any archive may unpack to this much, whatever its ratio (tiny archives of flat images
    # compress far better than photos).
    ratio_allowance_bytes: int = 16 << 20

    def bound(self, archive_bytes: int, free_bytes: int) -> tuple[int, str]:
        """The most an archive of `archive_bytes` may unpack to on a disk with `free_bytes`
        free, and why it is that much."""
        ratio_bound = int(self.ratio_allowance_bytes + self.max_ratio * archive_bytes)
        return min(
            (self.max_total_bytes, f"the limit is {_size(self.max_total_bytes)}"),
            (free_bytes, f"only {_size(free_bytes)} are free on the disk"),
            (
                ratio_bound,
                f"that is more than {self.max_ratio:g} times its own {_size(archive_bytes)}, "
                "as only a compression bomb is",
            ),
        )


def free_disk_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


@dataclass(frozen=True)
class Member:
    name: str  # normalised relative POSIX path
    size: int
    is_dir: bool


def archive_format(path: Path) -> str | None:
    """'zip' or 'tar' (plain, gzip, bz2 or xz), judged by content rather than by name."""
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        return None
    return None


def unpack_archive(
    archive: Path,
    destination: Path,
    limits: ArchiveLimits = ArchiveLimits(),
    expected_format: str | None = None,
    source: str | None = None,
    disk_free: Callable[[Path], int] = free_disk_bytes,
) -> list[Path]:
    """Check every member of `archive`, then extract it into `destination` (which must not
    exist yet). Returns the extracted files. `source` names the archive in messages (the
    user's URL or file name, not the temporary file it was downloaded to); `disk_free` tells
    the free bytes of a folder."""
    archive, destination = Path(archive), Path(destination)
    name = source or archive.name
    found = archive_format(archive)
    if found is None:
        raise UnsafeArchiveError(f"{name} is not a zip or tar archive (or is corrupt).")
    if expected_format not in (None, found):
        raise UnsafeArchiveError(f"{name} is a {found} archive, not a {expected_format}.")
    if destination.exists():
        raise FileExistsError(f"{destination} already exists.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    bound = limits.bound(archive.stat().st_size, disk_free(destination.parent))

    with _open(archive, found, name, bound, limits.max_members) as reader:
        members = reader.members()
        _check(members, name, limits, bound)
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
        try:
            files = []
            for member in members:
                target = staging / member.name
                if member.is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with reader.open(member) as member_file, open(target, "wb") as sink:
                    _copy_bounded(member_file, sink, member, name)
                files.append(destination / member.name)
            staging.rename(destination)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return files


def _check(
    members: list[Member], archive_name: str, limits: ArchiveLimits, bound: tuple[int, str]
) -> None:
    if len(members) > limits.max_members:
        raise UnsafeArchiveError(
            f"{archive_name} has {len(members)} members; at most {limits.max_members} are allowed."
        )
    total = sum(m.size for m in members)
    if total > bound[0]:
        raise UnsafeArchiveError(f"{archive_name} would unpack to {_size(total)}; {bound[1]}.")
    seen = set()
    for member in members:
        if member.name in seen and not member.is_dir:
            raise UnsafeArchiveError(f"{archive_name} contains {member.name!r} twice.")
        seen.add(member.name)
    files = {m.name for m in members if not m.is_dir}
    for member in members:
        parent = PurePosixPath(member.name).parent
        while parent != PurePosixPath("."):
            if str(parent) in files:
                raise UnsafeArchiveError(
                    f"{archive_name} holds both a file {str(parent)!r} and {member.name!r} "
                    f"inside a folder of that name; rename one of them and pack it again."
                )
            parent = parent.parent


def _safe_name(raw: str, archive_name: str) -> str:
    name = raw.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive_name}: member {raw!r} has an absolute path.")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{archive_name}: member {raw!r} points outside the archive.")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise UnsafeArchiveError(f"{archive_name}: member {raw!r} has an empty name.")
    return "/".join(parts)


def _copy_bounded(source: BinaryIO, sink: BinaryIO, member: Member, archive_name: str) -> None:
    written = 0
    while chunk := source.read(COPY_CHUNK):
        written += len(chunk)
        if written > member.size:  # a header that lies about the size
            raise UnsafeArchiveError(f"{archive_name}: {member.name} is larger than declared.")
        sink.write(chunk)


class _ZipReader:
    def __init__(self, path: Path, name: str):
        self.zip = zipfile.ZipFile(path)
        self.name = name
        self.infos: dict[str, zipfile.ZipInfo] = {}

    def members(self) -> list[Member]:
        members = []
        for info in self.zip.infolist():
            file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records none
            if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchiveError(
                    f"{self.name}: member {info.filename!r} is a link or special file."
                )
            if info.flag_bits & 0x1:
                raise UnsafeArchiveError(f"{self.name}: member {info.filename!r} is encrypted.")
            name = _safe_name(info.filename, self.name)
            self.infos[name] = info
            members.append(Member(name, info.file_size, info.is_dir()))
        return members

    def open(self, member: Member) -> BinaryIO:
        return self.zip.open(self.infos[member.name])

    def close(self) -> None:
        self.zip.close()


class _TarReader:
    """A tar, plain or compressed, read through a stream that stops at the bound."""

    def __init__(self, path: Path, name: str, bound: tuple[int, str], max_members: int):
        self.file = open(path, "rb")
        start = self.file.read(6)
        self.file.seek(0)
        decompressor = next((d for m, d in DECOMPRESSORS.items() if start.startswith(m)), None)
        stream = decompressor(fileobj=self.file) if decompressor else self.file
        # Headers come on top of the data (a member's header, padding and long name).
        limit = bound[0] + TAR_MEMBER_OVERHEAD * (max_members + 1)
        refusal = f"{name} unpacks to more than {_size(bound[0])}; {bound[1]}."
        try:
            self.tar = tarfile.open(fileobj=_BoundedStream(stream, limit, refusal), mode="r:")
        except (tarfile.TarError, EOFError, OSError) as error:
            self.file.close()
            raise UnsafeArchiveError(f"{name} is a corrupt tar archive: {error}") from None
        self.name = name
        self.infos: dict[str, tarfile.TarInfo] = {}

    def members(self) -> list[Member]:
        members = []
        try:
            infos = self.tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as error:
            raise UnsafeArchiveError(f"{self.name} is a corrupt tar archive: {error}") from None
        for info in infos:
            if not (info.isfile() or info.isdir()):
                raise UnsafeArchiveError(
                    f"{self.name}: member {info.name!r} is a link or special file."
                )
            name = _safe_name(info.name, self.name)
            self.infos[name] = info
            members.append(Member(name, info.size, info.isdir()))
        return members

    def open(self, member: Member) -> BinaryIO:
        return self.tar.extractfile(self.infos[member.name])

    def close(self) -> None:
        self.tar.close()
        self.file.close()


class _BoundedStream:
    """A readable, seekable stream (a decompressor's output) that raises `refusal` instead of
    passing `limit` bytes, so a bomb is never decompressed further than that."""

    def __init__(self, inner: BinaryIO, limit: int, refusal: str):
        self.inner, self.limit, self.refusal = inner, limit, refusal

    def read(self, size: int = -1) -> bytes:
        room = self.limit + 1 - self.inner.tell()  # one byte past the limit tells it is passed
        data = self.inner.read(room if size < 0 else min(size, room))
        if self.inner.tell() > self.limit:
            raise UnsafeArchiveError(self.refusal)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:  # tarfile never reads from the end
            raise io.UnsupportedOperation("seek from the end")
        target = offset + (self.inner.tell() if whence == 1 else 0)
        if target > self.limit:
            raise UnsafeArchiveError(self.refusal)
        return self.inner.seek(target)

    def tell(self) -> int:
        return self.inner.tell()


@contextmanager
def _open(
    path: Path, kind: str, name: str, bound: tuple[int, str], max_members: int
) -> Iterator[_ZipReader | _TarReader]:
    try:
        if kind == "zip":
            reader = _ZipReader(path, name)
        else:
            reader = _TarReader(path, name, bound, max_members)
    except zipfile.BadZipFile as error:
        raise UnsafeArchiveError(f"{name} is a corrupt zip archive: {error}") from None
    try:
        yield reader
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as error:
        raise UnsafeArchiveError(f"{name} is corrupt: {error}") from None
    finally:
        reader.close()


def _size(count: int) -> str:
    return f"{count / 2**20:.0f} MiB" if count >= 1 << 20 else f"{count / 2**10:.0f} KiB"
