"""Downloads against a real HTTP server on 127.0.0.1: resume, parallel ranges, limits, errors."""

import base64
import os
import socket
import time
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from tests.fileserver import HTML_PAGE, LOCAL
from weights.download import DownloadError, DownloadPolicy, check_safetensors, download
from weights.trained_files import UnsafeFormatError

DATA = os.urandom(3_000_000)
# Fast retries; a small parallel threshold so a 3 MB file takes the ranged path.
POLICY = DownloadPolicy(retry_wait=0.01, progress=False, parallel_min_bytes=1 << 40, allowed=LOCAL)
RANGED = replace(POLICY, parallel_min_bytes=1 << 20)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != "out.bin")


@pytest.mark.parametrize("ranges", [True, False])
def test_whole_file_arrives_in_one_request(file_server, tmp_path, ranges):
    url = file_server.add("/w.bin2", DATA, ranges=ranges)
    result = download(url, tmp_path / "out.bin", POLICY)
    assert (tmp_path / "out.bin").read_bytes() == DATA
    assert result.size == len(DATA) and not result.ranged
    assert file_server.requests("/w.bin2") == 1
    assert leftovers(tmp_path) == []


def test_dropped_connection_resumes_with_range(file_server, tmp_path):
    url = file_server.add("/w", DATA, drop_after=2_500_000)
    download(url, tmp_path / "out.bin", POLICY)
    assert (tmp_path / "out.bin").read_bytes() == DATA
    first, resumed = file_server.range_headers["/w"]
    assert first is None
    assert resumed.startswith("bytes=") and int(resumed[6:].rstrip("-")) > 1_000_000
    assert leftovers(tmp_path) == []


def test_dropped_connection_without_range_support_starts_over(file_server, tmp_path):
    url = file_server.add("/w", DATA, ranges=False, drop_after=2_500_000, drops=2)
    download(url, tmp_path / "out.bin", POLICY)
    assert (tmp_path / "out.bin").read_bytes() == DATA
    assert file_server.requests("/w") == 3


def test_connection_that_keeps_dropping_fails_and_leaves_nothing(file_server, tmp_path):
    url = file_server.add("/w", DATA, ranges=False, drop_after=1000, drops=100)
    policy = replace(POLICY, retries=2)
    with pytest.raises(DownloadError, match="failed 3 times"):
        download(url, tmp_path / "out.bin", policy)
    assert list(tmp_path.iterdir()) == []


def test_large_file_from_range_server_is_fetched_in_parallel_parts(file_server, tmp_path):
    url = file_server.add("/big", DATA, drop_after=300_000, drops=3)  # some parts drop too
    result = download(url, tmp_path / "out.bin", RANGED)
    assert result.ranged
    assert (tmp_path / "out.bin").read_bytes() == DATA
    ranges = [h for h in file_server.range_headers["/big"] if h]
    assert len({h.split("-")[0] for h in ranges}) >= RANGED.parallel_parts
    assert leftovers(tmp_path) == []


def test_large_file_from_server_without_range_is_one_stream(file_server, tmp_path):
    url = file_server.add("/big", DATA, ranges=False)
    result = download(url, tmp_path / "out.bin", RANGED)
    assert not result.ranged and (tmp_path / "out.bin").read_bytes() == DATA
    assert file_server.requests("/big") == 1


def test_range_requests_that_are_ignored_fall_back_to_one_stream(file_server, tmp_path):
    url = file_server.add("/big", DATA, ignore_range=True)  # a misconfigured CDN
    result = download(url, tmp_path / "out.bin", RANGED)
    assert not result.ranged and (tmp_path / "out.bin").read_bytes() == DATA


def test_busy_server_is_asked_again(file_server, tmp_path):
    url = file_server.add("/w", DATA, unavailable=2)
    download(url, tmp_path / "out.bin", POLICY)
    assert (tmp_path / "out.bin").read_bytes() == DATA
    assert file_server.requests("/w") == 3


def test_http_errors_and_html_pages_are_explained(file_server, tmp_path):
    cases = {
        file_server.url("/missing.tar"): "HTTP 404.*check it for typos",
        file_server.add_html("/login"): "HTML page instead of the file",
        file_server.add("/page", HTML_PAGE): "HTML page instead of the file",  # mislabelled
        file_server.add_html("/forbidden", status=403): "HTTP 403.*access is denied",
    }
    for url, message in cases.items():
        with pytest.raises(DownloadError, match=message):
            download(url, tmp_path / "out.bin", POLICY)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_and_timeout_fail_fast(file_server, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="Could not reach 127.0.0.1"):
        download(f"http://127.0.0.1:{closed_port}/w.tar", tmp_path / "out.bin", POLICY)

    url = file_server.add("/slow", DATA, delay=3)
    started = time.perf_counter()
    policy = replace(POLICY, read_timeout=0.5, retries=0)
    with pytest.raises(DownloadError, match="did not answer within 0.5 s"):
        download(url, tmp_path / "out.bin", policy)
    assert time.perf_counter() - started < 2.5
    assert list(tmp_path.iterdir()) == []


def test_size_limit_is_enforced_before_the_body_is_read(file_server, tmp_path):
    url = file_server.add("/w", DATA)
    policy = replace(POLICY, max_bytes=1_000_000)
    with pytest.raises(DownloadError, match="over the 1 MiB limit"):
        download(url, tmp_path / "out.bin", policy)
    assert list(tmp_path.iterdir()) == []


def test_pickle_urls_are_refused_without_a_request(file_server, tmp_path):
    for name in ("/model.ckpt", "/pytorch_lora_weights.bin", "/x.pt?sig=1", "/y.pth"):
        url = file_server.add(name, b"\x80\x02pickle")
        with pytest.raises(UnsafeFormatError, match="arbitrary code.*safetensors"):
            download(url, tmp_path / "out.bin", POLICY)
        assert file_server.requests(name.split("?")[0]) == 0


def test_content_check_rejects_before_rename(file_server, tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.ones(4, 4)}, good)
    check_safetensors(good)
    url = file_server.add("/lora.safetensors", good.read_bytes()[:-10])  # truncated file
    with pytest.raises(DownloadError, match="truncated"):
        download(url, tmp_path / "out.bin", POLICY, check=check_safetensors)
    assert not (tmp_path / "out.bin").exists()


def test_data_uri_is_decoded(tmp_path):
    uri = "data:application/octet-stream;base64," + base64.b64encode(DATA[:1000]).decode()
    download(uri, tmp_path / "out.bin", POLICY)
    assert (tmp_path / "out.bin").read_bytes() == DATA[:1000]
    with pytest.raises(DownloadError, match="not valid base64"):
        download("data:;base64,@@@", tmp_path / "bad.bin", POLICY)
