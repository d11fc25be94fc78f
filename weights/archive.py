"""Safe extraction of zip and tar archives (user datasets and weight bundles alike).

Every member is checked before anything is written: no absolute paths, no `..`, no links or
device files, bounded member count and unpacked size. Extraction goes to a staging folder
that is renamed into place, so a failure never leaves a half-unpacked tree behind.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

COPY_CHUNK = 1 << 20


class UnsafeArchiveError(ValueError):
    """The archive is corrupt, hostile, or larger than allowed; nothing was extracted."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 10_000
    max_total_bytes: int = 4 << 30


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
) -> list[Path]:
    """Check every member of `archive`, then extract it into `destination` (which must not
    exist yet). Returns the extracted files. `source` names the archive in messages (the
    user's URL or file name, not the temporary file it was downloaded to)."""
    archive, destination = Path(archive), Path(destination)
    name = source or archive.name
    found = archive_format(archive)
    if found is None:
        raise UnsafeArchiveError(f"{name} is not a zip or tar archive (or is corrupt).")
    if expected_format not in (None, found):
        raise UnsafeArchiveError(f"{name} is a {found} archive, not a {expected_format}.")
    if destination.exists():
        raise FileExistsError(f"{destination} already exists.")

    with _open(archive, found, name) as reader:
        members = reader.members()
        _check(members, name, limits)
        destination.parent.mkdir(parents=True, exist_ok=True)
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


def _check(members: list[Member], archive_name: str, limits: ArchiveLimits) -> None:
    if len(members) > limits.max_members:
        raise UnsafeArchiveError(
            f"{archive_name} has {len(members)} members; at most {limits.max_members} are allowed."
        )
    total = sum(m.size for m in members)
    if total > limits.max_total_bytes:
        raise UnsafeArchiveError(
            f"{archive_name} would unpack to {total / 2**20:.0f} MiB; "
            f"the limit is {limits.max_total_bytes / 2**20:.0f} MiB."
        )
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
    def __init__(self, path: Path, name: str):
        try:
            self.tar = tarfile.open(path)
        except tarfile.TarError as error:
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


@contextmanager
def _open(path: Path, kind: str, name: str) -> Iterator[_ZipReader | _TarReader]:
    try:
        reader = _ZipReader(path, name) if kind == "zip" else _TarReader(path, name)
    except zipfile.BadZipFile as error:
        raise UnsafeArchiveError(f"{name} is a corrupt zip archive: {error}") from None
    try:
        yield reader
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
        raise UnsafeArchiveError(f"{name} is corrupt: {error}") from None
    finally:
        reader.close()
