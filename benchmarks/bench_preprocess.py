"""Preprocessing throughput and peak memory per stage.

    .venv/bin/python benchmarks/bench_preprocess.py                 # 50 photos, 4000x3000, 1024
    .venv/bin/python benchmarks/bench_preprocess.py --count 10 --mask-prompt "a dog"

Generates the photos (smooth random scenes with sensor-like noise, saved as 4000x3000 JPEG
at quality 90, ~3 MB each, like a phone's) into a zip in a temporary folder, runs
`preprocess()` once and prints one table row per stage: seconds, images per second, the
peak resident memory of the process during the stage and, on CUDA, peak GPU memory.
Models come from the environment as in production (CAPTION_MODEL, MASK_MODEL,
UPSCALER_MODEL; `tiny` for the embedded test models).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preprocess import PreprocessConfig, StageClock, preprocess  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def synthetic_photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like image: smooth colour fields plus fine noise, so JPEG sizes and decode
    costs resemble real photos."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    noise = rng.normal(0, 6, (height, width, 1)).astype(np.int16)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def build_upload(folder: Path, count: int, size: tuple[int, int]) -> Path:
    archive = folder / "photos.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as upload:  # JPEGs do not deflate
        for index in range(count):
            path = folder / f"IMG_{index:04d}.jpg"
            synthetic_photo(*size, seed=index).save(path, quality=90)
            upload.write(path, path.name)
            path.unlink()
    return archive


class MemoryWatch:
    """Samples resident memory every few milliseconds and keeps the peak per stage."""

    def __init__(self):
        self.stage = "start"
        self.peak_rss: dict[str, int] = {}
        self.peak_gpu: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start_stage(self, name: str) -> None:
        self._close_gpu_stage()
        self.stage = name
        self.peak_rss[name] = _rss()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def _close_gpu_stage(self) -> None:
        if torch.cuda.is_available() and self.stage != "start":
            self.peak_gpu[self.stage] = torch.cuda.max_memory_allocated()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            stage = self.stage
            self.peak_rss[stage] = max(self.peak_rss.get(stage, 0), _rss())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._close_gpu_stage()
        self._stop.set()
        self._thread.join()


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--mask-prompt", default=None, help="CLIPSeg prompt (default: none)")
    parser.add_argument("--faces", action="store_true", help="face masks instead of CLIPSeg")
    parser.add_argument("--buckets", action="store_true", help="aspect-ratio buckets")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        upload = build_upload(Path(tmp), args.count, (args.width, args.height))
        print(
            f"{args.count} photos {args.width}x{args.height} JPEG "
            f"({upload.stat().st_size / 2**20:.0f} MiB zip) generated in "
            f"{time.perf_counter() - started:.0f} s; resolution {args.resolution}"
        )
        config = PreprocessConfig(
            input_path=upload,
            output_dir=Path(tmp) / "dataset",
            resolution=args.resolution,
            mask_target_prompts=args.mask_prompt,
            use_face_detection_instead=args.faces,
            aspect_buckets=args.buckets,
        )
        with MemoryWatch() as watch:
            clock = StageClock(on_start=watch.start_stage)
            dataset = preprocess(config, clock)
    used = len(dataset.images)

    print(f"\ndevice: {'cuda' if torch.cuda.is_available() else 'cpu'}, images used: {used}")
    print(f"{'stage':<10}{'seconds':>10}{'images/s':>11}{'peak RSS MiB':>15}{'peak GPU MiB':>15}")
    for stage, seconds in clock.seconds.items():
        gpu = watch.peak_gpu.get(stage)
        print(
            f"{stage:<10}{seconds:>10.2f}{used / max(seconds, 1e-9):>11.1f}"
            f"{watch.peak_rss.get(stage, 0) / 2**20:>15.0f}"
            f"{'-' if gpu is None else f'{gpu / 2**20:.0f}':>15}"
        )
    total = sum(clock.seconds.values())
    peak = max(watch.peak_rss.values()) / 2**20
    print(f"{'total':<10}{total:>10.2f}{used / total:>11.1f}{peak:>15.0f}")


if __name__ == "__main__":
    main()
