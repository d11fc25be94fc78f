"""The model store against a real HTTP server: trained-weights formats, cache hits across
restarts, one download for concurrent requests, LRU eviction, hostile and bad content."""

import base64
import fcntl
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from formats.bundle import EMBEDDINGS_PTI_FILE, LORA_FILE, SPECIAL_PARAMS_FILE, TRAINING_CONFIG_FILE
from tests.fileserver import ALLOWED_HOSTS, LOCAL
from weights.archive import ArchiveLimits
from weights.download import DownloadError, DownloadPolicy
from weights.network import ALLOWED_HOSTS_VARIABLE
from weights.settings import ModelSettings
from weights.store import ModelStore, StoreError
from weights.trained_files import UnrecognisedWeightsError, UnsafeFormatError, WeightsFormat

POLICY = DownloadPolicy(retry_wait=0.01, progress=False, allowed=LOCAL)
TOKEN_MAP = {"TOK": "<s0><s1>"}
LORA_KEYS = {
    WeightsFormat.LORA_DIFFUSERS: "unet.down_blocks.1.attentions.0.transformer_blocks.0"
    ".attn1.to_q.lora_A.weight",
    WeightsFormat.LORA_KOHYA: "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0"
    "_attn1_to_q.lora_down.weight",
    WeightsFormat.REPLICATE_LEGACY: "down_blocks.1.attentions.0.transformer_blocks.0"
    ".attn1.processor.to_q_lora.down.weight",
    WeightsFormat.LORA_LYCORIS: "lycoris_down_blocks_1_attentions_0_transformer_blocks_0"
    "_attn1_to_q.lokr_w1",
}


def lora_bytes(layout: WeightsFormat, values: int = 64) -> bytes:

    return save({LORA_KEYS[layout]: torch.arange(values, dtype=torch.float32).reshape(-1, 4)})


def bundle_members(layout=WeightsFormat.LORA_DIFFUSERS) -> dict[str, bytes]:

    pti = save({"text_encoders_0": torch.zeros(2, 32), "text_encoders_1": torch.zeros(2, 64)})
    return {
        LORA_FILE: lora_bytes(layout),
        EMBEDDINGS_PTI_FILE: pti,
        SPECIAL_PARAMS_FILE: json.dumps(TOKEN_MAP).encode(),
        TRAINING_CONFIG_FILE: b"{}",
    }


def tar_bytes(members: dict[str, bytes], mode="w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path / "cache", min_free_bytes=0, policy=POLICY)


def test_project_bundle_url_is_described(file_server, store):
    weights = store.trained_weights(
        file_server.add("/trained_model.tar", tar_bytes(bundle_members()))
    )
    assert weights.format is WeightsFormat.BUNDLE
    assert weights.lora.name == LORA_FILE and weights.lora.is_file()
    assert weights.embeddings_pti.name == EMBEDDINGS_PTI_FILE
    assert weights.token_map == TOKEN_MAP
    assert weights.source == file_server.url("/trained_model.tar")


def test_original_replicate_trainer_tarball_is_recognised(file_server, store):
    data = tar_bytes(bundle_members(WeightsFormat.REPLICATE_LEGACY))
    weights = store.trained_weights(file_server.add("/legacy.tar", data))
    assert weights.format is WeightsFormat.REPLICATE_LEGACY
    assert weights.token_map == TOKEN_MAP and weights.embeddings_pti is not None


@pytest.mark.parametrize(
    "layout", [WeightsFormat.LORA_DIFFUSERS, WeightsFormat.LORA_KOHYA, WeightsFormat.LORA_LYCORIS]
)
def test_bare_lora_url_and_zip_of_one(file_server, store, layout):
    bare = store.trained_weights(file_server.add("/my-lora.safetensors", lora_bytes(layout)))
    assert bare.format is layout and bare.lora.name == "my-lora.safetensors"
    assert bare.embeddings_pti is None and bare.token_map is None

    zipped = zip_bytes({"civitai/style.safetensors": lora_bytes(layout)})
    inside = store.trained_weights(file_server.add("/lora.zip", zipped))
    assert inside.format is layout and inside.lora.name == "style.safetensors"


def test_lora_whose_bytes_look_like_a_zip_is_still_a_lora(file_server, store):
    zip_end_record = b"PK\x05\x06" + bytes(20)  # zipfile.is_zipfile finds it at the end
    tail = torch.frombuffer(bytearray(zip_end_record), dtype=torch.uint8)
    data = save({LORA_KEYS[WeightsFormat.LORA_KOHYA]: torch.ones(4, 4), "zz.alpha": tail})
    assert zipfile.is_zipfile(io.BytesIO(data))
    weights = store.trained_weights(file_server.add("/odd.safetensors", data))
    assert weights.format is WeightsFormat.LORA_KOHYA and weights.lora.read_bytes() == data


def test_tar_gz_with_a_wrapping_folder_and_data_uri(file_server, store):
    members = {f"my-model/{name}": data for name, data in bundle_members().items()}
    weights = store.trained_weights(file_server.add("/w.tgz", tar_bytes(members, "w:gz")))
    assert weights.format is WeightsFormat.BUNDLE and weights.token_map == TOKEN_MAP

    uri = "data:application/x-tar;base64," + base64.b64encode(tar_bytes(bundle_members())).decode()
    from_uri = store.trained_weights(uri)
    assert from_uri.format is WeightsFormat.BUNDLE and from_uri.source.startswith("a data URI")


def test_local_tarball_folder_and_file(tmp_path, store):
    tarball = tmp_path / "trained_model.tar"
    tarball.write_bytes(tar_bytes(bundle_members()))
    from_tar = store.trained_weights(tarball)
    assert from_tar.format is WeightsFormat.BUNDLE
    assert tarball.is_file()  # unpacked into the cache, never moved

    folder = from_tar.lora.parent
    assert store.trained_weights(folder).lora == folder / LORA_FILE
    lora = tmp_path / "kohya.safetensors"
    lora.write_bytes(lora_bytes(WeightsFormat.LORA_KOHYA))
    assert store.trained_weights(lora).format is WeightsFormat.LORA_KOHYA


def test_the_store_from_settings_uses_the_configured_cache(file_server, tmp_path, monkeypatch):
    monkeypatch.setenv("SDXL_TUNER_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.setenv("SDXL_TUNER_CACHE_MIN_FREE_GB", "0")
    monkeypatch.delenv(ALLOWED_HOSTS_VARIABLE, raising=False)
    url = file_server.add("/t.tar", tar_bytes(bundle_members()))
    with pytest.raises(DownloadError, match="is refused"):  # 127.0.0.1 is not public
        ModelStore.from_settings(ModelSettings.from_env()).trained_weights(url)
    monkeypatch.setenv(ALLOWED_HOSTS_VARIABLE, ALLOWED_HOSTS)
    weights = ModelStore.from_settings(ModelSettings.from_env()).trained_weights(url)
    assert (tmp_path / "env-cache" / "store") in weights.lora.parents
    assert file_server.requests("/t.tar") == 1  # the refusal made no request


def test_pickles_are_refused_with_an_explanation(file_server, store, tmp_path):
    with pytest.raises(UnsafeFormatError, match="arbitrary code"):
        store.trained_weights(file_server.add("/lora.bin", b"\x80\x04pickle"))
    assert file_server.requests("/lora.bin") == 0
    local = tmp_path / "model.ckpt"
    local.write_bytes(b"\x80\x04pickle")
    with pytest.raises(UnsafeFormatError, match="Convert the weights to .safetensors"):
        store.trained_weights(local)
    zipped = zip_bytes({"pytorch_lora_weights.bin": b"\x80\x04pickle"})
    with pytest.raises(UnrecognisedWeightsError, match="only pickle files"):
        store.trained_weights(file_server.add("/pickles.zip", zipped))


def test_bad_content_never_becomes_a_cache_entry(file_server, store):
    cases = {
        file_server.add_html("/weights.tar"): (DownloadError, "HTML page"),
        file_server.add("/notes.tar", b"just some text, not a tar"): (DownloadError, "neither"),
        file_server.url("/gone.tar"): (DownloadError, "HTTP 404"),
        file_server.add("/x.tar", tar_bytes({"../evil.sh": b"rm -rf"})): (StoreError, "outside"),
        file_server.add("/bomb.zip", zip_bytes({"zeros": bytes(20 << 20)})): (StoreError, "MiB"),
        file_server.add("/nothing.tar", tar_bytes({"a.txt": b"hi"})): (
            UnrecognisedWeightsError,
            "not a trained-weights bundle",
        ),
    }
    store.archive_limits = ArchiveLimits(max_total_bytes=10 << 20)
    for url, (error, message) in cases.items():
        with pytest.raises(error, match=message):
            store.trained_weights(url)
    assert [p.name for p in store.root.iterdir()] == ["locks"]  # nothing, not even staging


def hostile_tar(kind: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        ok = tarfile.TarInfo(LORA_FILE)
        ok.size = 4
        archive.addfile(ok, io.BytesIO(b"safe"))
        info = tarfile.TarInfo(
            {"traversal": "../../evil.sh", "absolute": "/tmp/evil.sh"}.get(kind, "x")
        )
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, LORA_FILE
        data = b"#!/bin/sh" if kind in ("traversal", "absolute") else b""
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink", "hardlink"])
def test_hostile_archive_urls_are_refused_before_extraction(file_server, store, kind):
    url = file_server.add(f"/{kind}.tar.gz", hostile_tar(kind))
    with pytest.raises(StoreError, match="absolute path|outside the archive|link or special"):
        store.trained_weights(url)
    assert [p.name for p in store.root.iterdir()] == ["locks"]  # no entry, no staging left


def test_cache_hit_and_restart_make_no_new_request(file_server, tmp_path, caplog):
    url = file_server.add("/t.tar", tar_bytes(bundle_members()))
    caplog.set_level(logging.INFO, logger="weights.store")
    first = ModelStore(tmp_path / "cache", min_free_bytes=0, policy=POLICY).trained_weights(url)
    again = ModelStore(tmp_path / "cache", min_free_bytes=0, policy=POLICY)  # a restart
    assert again.fetch(url).hit
    assert again.trained_weights(url) == first
    assert file_server.requests("/t.tar") == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("cache miss" in m for m in messages) and any("cache hit" in m for m in messages)


def test_concurrent_requests_for_one_url_download_it_once(file_server, tmp_path):
    url = file_server.add("/t.tar", tar_bytes(bundle_members()), delay=0.5)
    results, errors = [], []

    def fetch():
        try:  # separate store objects, as in two workers sharing the cache
            store = ModelStore(tmp_path / "cache", min_free_bytes=0, policy=POLICY)
            results.append(store.trained_weights(url))
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results[0] == results[1]
    assert file_server.requests("/t.tar") == 1


FETCH_IN_PROCESS = """
import sys, time
from pathlib import Path
from tests.fileserver import LOCAL
from weights.download import DownloadPolicy
from weights.store import ModelStore
cache, url, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
policy = DownloadPolicy(progress=False, allowed=LOCAL)
store = ModelStore(Path(cache), min_free_bytes=0, policy=policy)
time.sleep(max(0.0, start_at - time.time()))  # both processes ask at the same moment
print(store.fetch(url).content)  # no inspection: keeps torch out of the workers
"""


def test_concurrent_processes_share_one_download(file_server, tmp_path):
    url = file_server.add("/t.tar", tar_bytes(bundle_members()), delay=0.5)
    start_at = str(time.time() + 2)
    command = [sys.executable, "-c", FETCH_IN_PROCESS, str(tmp_path / "cache"), url, start_at]
    root = Path(__file__).resolve().parents[1]
    workers = [
        subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=60)[0].strip() for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0]
    assert outputs[0] == outputs[1] and (Path(outputs[0]) / LORA_FILE).is_file()
    assert file_server.requests("/t.tar") == 1


KILLED_FETCH = """
import sys
from pathlib import Path
from tests.fileserver import LOCAL
from weights.download import DownloadPolicy
from weights.store import ModelStore
policy = DownloadPolicy(progress=False, allowed=LOCAL)
ModelStore(Path(sys.argv[1]), min_free_bytes=0, policy=policy).fetch(sys.argv[2])
"""


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def leftovers(root: Path) -> list[str]:
    """Everything in the store but its locks folder, and the lock files in it."""
    found = [p.name for p in root.iterdir() if p.name != "locks"]
    return sorted(found + [f"locks/{p.name}" for p in (root / "locks").iterdir()])


def test_what_a_killed_download_left_is_swept_by_the_next_store_and_by_eviction(
    file_server, tmp_path
):
    cache, project = tmp_path / "cache", Path(__file__).resolve().parents[1]
    running = ModelStore(cache, min_free_bytes=0, policy=POLICY)  # a worker that stays up
    for attempt in ("restart", "eviction"):  # signed URLs: each is new and never asked again
        url = file_server.add(f"/{attempt}.tar", bytes(2 << 20), rate=200_000) + "?sig=x"
        command = [sys.executable, "-c", KILLED_FETCH, str(cache), url]
        fetch = subprocess.Popen(command, cwd=project)
        wait_for(lambda: any(f.stat().st_size for f in running.root.glob(".*/.download.*")))
        fetch.kill()  # mid-download
        fetch.wait()
        left = leftovers(running.root)  # the staging folder with the partial file, the lock
        assert len(left) == 2 and left[0].startswith(".") and left[1].startswith("locks/")
        if attempt == "restart":
            ModelStore(cache, min_free_bytes=0, policy=POLICY)
        else:
            assert sorted(running.evict().swept) == left  # eviction reports what it swept
        assert leftovers(running.root) == []


def test_lock_files_do_not_pile_up_one_per_url(file_server, store):
    for index in range(5):
        with pytest.raises(DownloadError, match="HTTP 404"):
            store.fetch(file_server.url(f"/gone-{index}.tar"))
    kept = store.fetch(file_server.add("/t.tar", tar_bytes(bundle_members())))
    assert [p.name for p in (store.root / "locks").iterdir()] == [f"{kept.key}.lock"]
    ModelStore(store.root.parent, min_free_bytes=0, policy=POLICY)  # an entry keeps its lock
    assert [p.name for p in (store.root / "locks").iterdir()] == [f"{kept.key}.lock"]


def test_a_build_in_progress_is_left_alone_by_another_stores_sweep(file_server, tmp_path):
    url = file_server.add("/t.tar", tar_bytes(bundle_members()), delay=2)
    store = ModelStore(tmp_path / "cache", min_free_bytes=0, policy=POLICY)
    results = []
    builder = threading.Thread(target=lambda: results.append(store.fetch(url)))
    builder.start()
    wait_for(lambda: list(store.root.glob(".*")))  # its staging folder: the download waits
    ModelStore(tmp_path / "cache", min_free_bytes=0, policy=POLICY)  # another worker starts
    builder.join()
    assert results and (results[0].content / LORA_FILE).is_file()


def open_handles(path: Path) -> int:
    """How many open files of this process have `path` as their name (Linux's /proc)."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path))


def test_a_lock_file_swept_while_a_builder_waits_for_it_still_excludes(store):
    path = store.root / "locks" / "k.lock"
    entered, leave = threading.Event(), threading.Event()

    def waiter():
        with store._lock("k"):
            entered.set()
            leave.wait()

    with store._lock("k"):  # the first builder
        thread = threading.Thread(target=waiter)
        thread.start()
        wait_for(lambda: open_handles(path) == 2)  # the waiter opened the file: it waits
        path.unlink()  # a sweep removes the file (holding its lock, as `sweep` does)
        newer = open(path, "a")  # a third builder locks the file that now has the name
        fcntl.flock(newer, fcntl.LOCK_EX)
    # The first builder is done. The waiter wakes holding the lock of the nameless old file:
    # it must wait for the third builder rather than enter beside it.
    assert not entered.wait(timeout=1.0)
    newer.close()  # the third builder is done
    assert entered.wait(timeout=30)
    leave.set()
    thread.join()


class SmallDisk:
    """A disk of `capacity` bytes that holds only the cache: free = capacity - cache size."""

    def __init__(self, root: Path, capacity: int):
        self.root, self.capacity = root, capacity

    def __call__(self, _path) -> int:
        used = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())
        return self.capacity - used


def test_least_recently_used_entries_are_evicted_to_keep_free_disk(file_server, tmp_path):
    cache = tmp_path / "cache"
    entry_size = len(lora_bytes(WeightsFormat.LORA_KOHYA, values=25_000))  # about 100 kB
    disk = SmallDisk(cache, capacity=4 * entry_size)
    store = ModelStore(cache, min_free_bytes=int(1.5 * entry_size), policy=POLICY, disk_free=disk)
    urls = {
        name: file_server.add(f"/{name}.safetensors", lora_bytes(WeightsFormat.LORA_KOHYA, 25_000))
        for name in "abc"
    }

    a = store.trained_weights(urls["a"]).lora
    b = store.trained_weights(urls["b"]).lora
    assert store.trained_weights(urls["a"]).lora == a  # a is now the most recently used
    c = store.trained_weights(urls["c"]).lora  # no room for three: b goes

    assert a.is_file() and c.is_file() and not b.exists()
    assert disk(cache) >= store.min_free_bytes
    store.trained_weights(urls["b"])
    assert file_server.requests("/b.safetensors") == 2  # evicted, so fetched again
    assert file_server.requests("/a.safetensors") == 1


def test_store_limits_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SDXL_TUNER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SDXL_TUNER_CACHE_MIN_FREE_GB", "0.5")
    monkeypatch.setenv("SDXL_TUNER_MAX_DOWNLOAD_GB", "2")
    store = ModelStore.from_settings(ModelSettings.from_env())
    assert store.root == tmp_path / "cache" / "store"
    assert store.min_free_bytes == 512 << 20
    assert store.policy.max_bytes == store.archive_limits.max_total_bytes == 2 << 30

    monkeypatch.setenv("SDXL_TUNER_MAX_DOWNLOAD_GB", "lots")
    with pytest.raises(ValueError, match="SDXL_TUNER_MAX_DOWNLOAD_GB"):
        ModelSettings.from_env()
