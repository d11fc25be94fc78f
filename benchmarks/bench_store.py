"""Model-store benchmark: fetch a new 100 MB weights bundle from a local HTTP server as one
stream and as parallel ranges, and reuse it from the cache (as a restarted predictor would).

    .venv/bin/python benchmarks/bench_store.py [--mb 100] [--repeats 3]

Each figure is the median of the repeats. "download only" is the transfer to one file, from
the loopback server at full speed and from one that throttles each connection (as CDNs and
object stores do, where parallel ranges pay off); "new bundle" is the whole store path:
download, content check, safe unpacking, `inspect_weights`. The server is Python's
http.server on 127.0.0.1, so the loopback figures show the store's own overhead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from formats.bundle import EMBEDDINGS_PTI_FILE, LORA_FILE, SPECIAL_PARAMS_FILE  # noqa: E402
from tests.fileserver import LOCAL, FileServer  # noqa: E402
from weights.download import DownloadPolicy, download  # noqa: E402
from weights.store import ModelStore  # noqa: E402


def make_bundle(folder: Path, megabytes: int) -> Path:
    """A weights tarball of about `megabytes` MB (random LoRA tensors, as a real bundle)."""
    generator = torch.Generator().manual_seed(0)
    values = megabytes * 10**6 // 4 // 64
    lora = {
        "unet.mid_block.attentions.0.proj_in.lora_A.weight": torch.randn(
            values, 64, generator=generator
        )
    }
    save_file(lora, folder / LORA_FILE)
    save_file(
        {"text_encoders_0": torch.zeros(2, 768), "text_encoders_1": torch.zeros(2, 1280)},
        folder / EMBEDDINGS_PTI_FILE,
    )
    (folder / SPECIAL_PARAMS_FILE).write_text(json.dumps({"TOK": "<s0><s1>"}))
    bundle = folder / "trained_model.tar"
    with tarfile.open(bundle, "w") as archive:
        for name in (LORA_FILE, EMBEDDINGS_PTI_FILE, SPECIAL_PARAMS_FILE):
            archive.add(folder / name, arcname=name)
    return bundle


def median_seconds(action, repeats: int) -> float:
    times = []
    for run in range(repeats):
        started = time.perf_counter()
        action(run)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=int, default=25, help="MB/s per throttled connection")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, FileServer() as server:
        tmp = Path(tmp)
        bundle = make_bundle(tmp, args.mb)
        size_mb = bundle.stat().st_size / 10**6
        servers = {
            "loopback": server.add("/trained_model.tar", bundle),
            f"{args.rate} MB/s per connection": server.add(
                "/throttled/trained_model.tar", bundle, rate=args.rate * 10**6
            ),
        }
        policies = {
            "one stream": DownloadPolicy(progress=False, parallel_min_bytes=1 << 62, allowed=LOCAL),
            "8 parallel ranges": DownloadPolicy(
                progress=False, parallel_min_bytes=1, allowed=LOCAL
            ),
        }
        rows = []
        # 1. The transfer alone, from a fast and from a throttling server.
        for where, url in servers.items():
            for how, policy in policies.items():
                seconds = median_seconds(
                    lambda run, url=url, policy=policy: download(url, tmp / "raw.tar", policy),
                    args.repeats,
                )
                rows.append((f"download only, {where}, {how}", seconds))
        # 2. The whole store path for a new bundle: download, check, unpack, inspect.
        url = servers["loopback"]
        for how, policy in policies.items():

            def fetch_new(run, how=how, policy=policy):
                store = ModelStore(tmp / f"cache-{how}-{run}", min_free_bytes=0, policy=policy)
                store.trained_weights(url)

            rows.append((f"new bundle, loopback, {how}", median_seconds(fetch_new, args.repeats)))
        # 3. A new store object on a warm cache: what a restarted predictor pays.
        warm = tmp / f"cache-{how}-0"
        seconds = median_seconds(
            lambda run: ModelStore(warm, min_free_bytes=0).trained_weights(url), args.repeats
        )
        rows.append(("cached bundle, new store object", seconds))

    print(f"\nModel store: {size_mb:.0f} MB bundle from 127.0.0.1, median of {args.repeats}\n")
    print("| case | time | throughput |")
    print("|---|---|---|")
    for label, seconds in rows:
        throughput = "-" if label.startswith("cached") else f"{size_mb / seconds:.0f} MB/s"
        print(f"| {label} | {seconds * 1000:.1f} ms | {throughput} |")


if __name__ == "__main__":
    main()
