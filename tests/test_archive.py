"""Safe archive extraction: hostile archives are refused before anything is written."""

import io
import os
import tarfile
import zipfile

import pytest

from weights.archive import ArchiveLimits, UnsafeArchiveError, archive_format, unpack_archive


def make_zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def make_tar(path, build, mode="w:gz"):
    with tarfile.open(path, mode) as archive:
        build(archive)
    return path


def add_file(archive: tarfile.TarFile, name: str, data: bytes = b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def test_zip_and_tar_gz_unpack_with_nested_folders(tmp_path):
    zipped = make_zip(tmp_path / "a.zip", {"photos/one.jpg": b"1", "photos/sub/two.jpg": b"22"})
    tarred = make_tar(
        tmp_path / "b.bin",
        lambda t: (add_file(t, "x/one.jpg", b"1"), add_file(t, "x/y/two.jpg", b"22")),
    )
    assert archive_format(zipped) == "zip" and archive_format(tarred) == "tar"

    files = unpack_archive(zipped, tmp_path / "out-zip")
    assert sorted(f.relative_to(tmp_path / "out-zip").as_posix() for f in files) == [
        "photos/one.jpg",
        "photos/sub/two.jpg",
    ]
    unpack_archive(tarred, tmp_path / "out-tar")
    assert (tmp_path / "out-tar/x/y/two.jpg").read_bytes() == b"22"


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/etc/evil", "C:/evil"])
def test_paths_escaping_the_destination_are_refused(tmp_path, name):
    archive = make_zip(tmp_path / "evil.zip", {"ok.jpg": b"1", name: b"pwned"})
    with pytest.raises(UnsafeArchiveError):
        unpack_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["evil.zip"]  # no staging left behind


def test_tar_links_and_devices_are_refused(tmp_path):
    def symlink(t):
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)

    def hardlink(t):
        add_file(t, "a.jpg")
        info = tarfile.TarInfo("b.jpg")
        info.type, info.linkname = tarfile.LNKTYPE, "a.jpg"
        t.addfile(info)

    def device(t):
        info = tarfile.TarInfo("dev")
        info.type = tarfile.CHRTYPE
        t.addfile(info)

    for index, build in enumerate([symlink, hardlink, device]):
        archive = make_tar(tmp_path / f"{index}.tar", build, mode="w")
        with pytest.raises(UnsafeArchiveError, match="link or special file"):
            unpack_archive(archive, tmp_path / f"out{index}")
        assert not (tmp_path / f"out{index}").exists()


def test_zip_symlink_is_refused(tmp_path):
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777) << 16  # S_IFLNK
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="link"):
        unpack_archive(path, tmp_path / "out")


def test_bomb_past_the_size_limit_is_refused_before_writing(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(20 << 20)})
    assert archive.stat().st_size < 100_000
    with pytest.raises(UnsafeArchiveError, match="would unpack to 20 MiB"):
        unpack_archive(archive, tmp_path / "out", ArchiveLimits(max_total_bytes=10 << 20))
    assert not (tmp_path / "out").exists()


def test_too_many_members_are_refused(tmp_path):
    archive = make_zip(tmp_path / "many.zip", {f"{i}.txt": b"" for i in range(30)})
    with pytest.raises(UnsafeArchiveError, match="30 members"):
        unpack_archive(archive, tmp_path / "out", ArchiveLimits(max_members=20))


def test_corrupt_and_non_archives_are_refused(tmp_path):
    good = make_zip(tmp_path / "good.zip", {"a.jpg": bytes(range(256)) * 100})
    broken = tmp_path / "broken.zip"
    data = bytearray(good.read_bytes())
    data[40:400] = bytes(360)  # damage the compressed stream, keep the directory
    broken.write_bytes(bytes(data))
    text = tmp_path / "notes.zip"
    text.write_text("this is not an archive")

    for archive in (broken, text):
        with pytest.raises(UnsafeArchiveError):
            unpack_archive(archive, tmp_path / f"out-{archive.stem}")
        assert not (tmp_path / f"out-{archive.stem}").exists()


def test_expected_format_mismatch_is_reported(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"a.jpg": b"1"})
    with pytest.raises(UnsafeArchiveError, match="is a zip archive, not a tar"):
        unpack_archive(archive, tmp_path / "out", expected_format="tar")


def test_a_file_and_a_folder_of_the_same_name_are_refused_by_their_member_names(tmp_path):
    zipped = make_zip(tmp_path / "photos.zip", {"a": b"1", "a/b.png": b"2"})
    with pytest.raises(UnsafeArchiveError) as error:
        unpack_archive(zipped, tmp_path / "out", source="https://example.com/photos.zip")
    message = str(error.value)
    assert "https://example.com/photos.zip holds both a file 'a' and 'a/b.png'" in message
    assert str(tmp_path) not in message and not (tmp_path / "out").exists()


def test_a_compression_bomb_under_the_size_limit_is_refused_by_its_ratio(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(64 << 20)})
    assert archive.stat().st_size < 100_000  # about 1000 times smaller than what it holds
    with pytest.raises(
        UnsafeArchiveError, match=r"more than 100 times its own \d+ KiB, as only a compression bomb"
    ):
        unpack_archive(archive, tmp_path / "out")  # well under the 4 GiB limit
    assert [p.name for p in tmp_path.iterdir()] == ["bomb.zip"]  # nothing written


def test_a_tar_gz_bomb_is_refused_while_listing_before_it_is_decompressed(tmp_path):
    path = make_tar(tmp_path / "bomb.tar.gz", lambda t: add_file(t, "zeros.bin", bytes(128 << 20)))
    # Cut the stream short: a listing that decompressed all of it would find it truncated
    # and call it corrupt; one that stops at the bound never gets there.
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UnsafeArchiveError, match="bomb.tar.gz unpacks to more than 22 MiB"):
        unpack_archive(path, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["bomb.tar.gz"]


def test_an_archive_larger_than_the_free_disk_is_refused_before_writing(tmp_path):
    archive = make_zip(tmp_path / "photos.zip", {"a.jpg": os.urandom(3 << 20)})
    with pytest.raises(UnsafeArchiveError, match="3 MiB; only 2 MiB are free on the disk"):
        unpack_archive(archive, tmp_path / "out", disk_free=lambda folder: 2 << 20)
    assert [p.name for p in tmp_path.iterdir()] == ["photos.zip"]
