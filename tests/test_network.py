"""Which addresses downloads may reach (weights/network.py), against real HTTP servers on
loopback addresses: public ones only, unless the operator allows more; every redirect hop is
checked; a refusal makes no request and reads the same whatever is at the address."""

import ipaddress
import socket

import pytest

from tests.fileserver import FileServer
from weights.download import DownloadError, DownloadPolicy, describe_source, download
from weights.network import ALLOWED_HOSTS_VARIABLE, AllowList, is_public
from weights.references import check_file_input, is_remote
from weights.settings import ModelSettings

POLICY = DownloadPolicy(progress=False, retries=0)  # the default: public addresses only
NOT_PUBLIC = [
    "127.0.0.1",  # loopback
    "10.1.2.3",  # private
    "192.168.1.1",
    "169.254.169.254",  # link-local: the cloud metadata service
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "0.0.0.0",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "::1",
    "::",
    "fe80::1",
    "fc00::1",  # unique local
    "fec0::1",  # site-local
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


def test_only_internet_addresses_count_as_public():
    assert [a for a in NOT_PUBLIC if is_public(ipaddress.ip_address(a))] == []
    assert all(is_public(ipaddress.ip_address(a)) for a in PUBLIC)


def test_the_allow_list_takes_names_addresses_and_ranges(monkeypatch):
    monkeypatch.setenv(ALLOWED_HOSTS_VARIABLE, "files.internal, 10.0.0.5,192.168.0.0/16, [::1]")
    allowed = ModelSettings.from_env().allowed_hosts
    ip = ipaddress.ip_address
    assert allowed.admits("FILES.internal", ip("10.9.9.9"))  # by name, whatever it resolves to
    assert allowed.admits("x", ip("10.0.0.5")) and allowed.admits("x", ip("192.168.4.4"))
    assert allowed.admits("x", ip("::1")) and allowed.admits("x", ip("::ffff:10.0.0.5"))
    assert not allowed.admits("x", ip("10.0.0.6")) and not allowed.admits("x", ip("127.0.0.1"))
    monkeypatch.setenv(ALLOWED_HOSTS_VARIABLE, "files.internal, http://10.0.0.5/")
    with pytest.raises(ValueError, match=f"{ALLOWED_HOSTS_VARIABLE}: 'http://10.0.0.5/' is not"):
        ModelSettings.from_env()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_non_public_urls_are_refused_alike_and_never_requested(file_server, tmp_path):
    secret = file_server.add("/secret.png", b"internal data")
    urls = [
        secret,
        secret.replace("127.0.0.1", "localhost"),
        secret.replace("127.0.0.1", "[::1]"),
        secret.replace("127.0.0.1", "[::ffff:127.0.0.1]"),
        f"http://127.0.0.1:{closed_port()}/secret.png",
        "http://169.254.169.254/latest/meta-data/",
        "https://10.0.0.7/weights.tar",
    ]
    messages = set()
    for url in urls:
        with pytest.raises(DownloadError) as error:
            download(url, tmp_path / "out", POLICY)
        messages.add(str(error.value).replace(describe_source(url), "<url>"))
    assert len(messages) == 1 and "<url> is refused" in messages.pop()
    assert file_server.requests("/secret.png") == 0 and list(tmp_path.iterdir()) == []


def test_an_allowed_host_is_fetched_and_every_redirect_hop_is_checked(file_server, tmp_path):
    secret = file_server.add("/secret.png", b"internal data")
    with FileServer("127.0.0.2") as allowed_server:
        policy = DownloadPolicy(progress=False, allowed=AllowList.parse("127.0.0.2"))
        photo = allowed_server.add("/photo.png", b"a photo")
        moved = allowed_server.add_redirect("/moved.png", photo)
        download(moved, tmp_path / "moved", policy)
        assert (tmp_path / "moved").read_bytes() == b"a photo"  # a redirect within the list

        leak = allowed_server.add_redirect("/leak.png", secret)
        with pytest.raises(DownloadError, match="is refused: its host, or a redirect from it"):
            download(leak, tmp_path / "leak", policy)
        assert allowed_server.requests("/leak.png") == 1
        assert file_server.requests("/secret.png") == 0

        to_a_file = allowed_server.add_redirect("/file.png", "file:///etc/passwd")
        with pytest.raises(DownloadError, match="redirects to something not an http"):
            download(to_a_file, tmp_path / "file", policy)

    by_name = DownloadPolicy(progress=False, allowed=AllowList.parse("localhost"))
    download(secret.replace("127.0.0.1", "localhost"), tmp_path / "named", by_name)
    with pytest.raises(DownloadError, match="is refused"):  # the name, not its address
        download(secret, tmp_path / "numeric", by_name)


def test_url_schemes_are_case_insensitive(file_server, tmp_path):
    url = file_server.add("/photo.png", b"a photo").replace("http://", "HTTP://")
    assert is_remote(url) and is_remote("Data:image/png;base64,AAAA")
    assert check_file_input("image", url, local_dirs=()) == url  # a URL, not a server path
    policy = DownloadPolicy(progress=False, allowed=AllowList.parse("127.0.0.1"))
    download(url, tmp_path / "photo", policy)
    assert (tmp_path / "photo").read_bytes() == b"a photo"
