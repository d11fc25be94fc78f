"""The training dataset: every image of a prepared dataset folder encoded by the VAE once (at
each training size, with multi-resolution buckets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from families import ModelFamily
from formats.dataset_folder import CaptionedImage


class LatentCache:
    """The cached latent distributions, one entry of named tensors per dataset entry: in
    memory, or with `folder` one safetensors file per entry there, read back when a batch
    needs it (resident memory then holds a batch, not the whole set)."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder
        self.entries: list[dict[str, torch.Tensor] | Path] = []
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.folder is None:
            self.entries.append(tensors)
            return
        file = self.folder / f"{len(self.entries):06d}.safetensors"
        save_file(tensors, str(file))
        self.entries.append(file)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        entry = self.entries[index]
        return load_file(str(entry)) if isinstance(entry, Path) else entry


class CachedLatentsDataset:
    """Every training image encoded by the VAE once (and once more mirrored when flips are on).

    The VAE's latent distribution (mean, std) is kept, so each step still draws a fresh latent
    sample without running the encoder again. Masks are kept at latent resolution. `scales`
    below 1 add each image again, downscaled by that factor (sides multiples of 16): the
    multi-resolution buckets, each size its own bucket. `cache_dir`: keep the latents there on
    disk instead of in memory (`LatentCache`).
    """

    def __init__(
        self,
        items: list[CaptionedImage],
        vae,
        family: ModelFamily,
        flip: bool,
        use_masks: bool,
        scales: tuple[float, ...] = (),
        cache_dir: Path | None = None,
    ):
        self.image_count = len(items)  # photos; each is len(scales) + 1 entries
        self.captions = [item.caption for item in items for _ in range(1 + len(scales))]
        self.pixel_sizes: list[tuple[int, int]] = []
        self.latent_sizes: list[tuple[int, int]] = []
        self.cache, self.masks = LatentCache(cache_dir), []
        self.flip = flip
        # The family's normalisation of a VAE latent sample (kept: the VAE is dropped later).
        self.to_training = family.training_latents(vae)
        for item in items:
            full = load_pixels(item.image_path)
            for pixels in (full, *(downscale(full, scale) for scale in scales)):
                self._add(vae, pixels, item, use_masks)

    def _add(self, vae, pixels: torch.Tensor, item: CaptionedImage, use_masks: bool) -> None:
        self.pixel_sizes.append(tuple(pixels.shape[-2:]))
        mean, std = self._encode(vae, pixels)
        tensors = {"mean": mean, "std": std}
        if self.flip:
            tensors["flipped_mean"], tensors["flipped_std"] = self._encode(vae, pixels.flip(-1))
        self.cache.add(tensors)
        size = tuple(self.to_training(mean[None]).shape[-2:])  # the denoiser's latent size
        self.latent_sizes.append(size)
        self.masks.append(load_mask(item.mask_path, size) if use_masks and item.mask_path else None)

    def __len__(self) -> int:
        return len(self.captions)

    def buckets(self) -> dict[tuple[int, int], list[int]]:
        """Indices of the images of each pixel size (one size without aspect buckets)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(self.pixel_sizes):
            groups.setdefault(size, []).append(index)
        return groups

    def latents(self, indices, flips, generator: torch.Generator) -> torch.Tensor:
        """A batch of latents sampled from the cached distributions, as the denoiser takes
        them (the family's normalisation)."""
        means, stds = [], []
        for index, flip in zip(indices, flips, strict=True):
            tensors, prefix = self.cache[index], "flipped_" if flip else ""
            means.append(tensors[prefix + "mean"])
            stds.append(tensors[prefix + "std"])
        mean, std = torch.stack(means), torch.stack(stds)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return self.to_training(mean + std * noise)

    def mask_batch(self, indices, flips) -> torch.Tensor | None:
        """Masks [B, 1, h, w] in [0, 1], or None when no image of the batch has one."""
        if all(self.masks[i] is None for i in indices):
            return None
        masks = []
        for index, flip in zip(indices, flips, strict=True):
            mask = self.masks[index]
            if mask is None:
                mask = torch.ones((1, *self.latent_sizes[index]))
            masks.append(mask.flip(-1) if flip else mask)
        return torch.stack(masks)

    @staticmethod
    @torch.no_grad()
    def _encode(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = pixels[None].to(vae.device, vae.dtype)
        distribution = vae.encode(batch).latent_dist
        return distribution.mean[0].float().cpu(), distribution.std[0].float().cpu()


def downscale(pixels: torch.Tensor, scale: float) -> torch.Tensor:
    """[3, H, W] pixels resized by `scale` (antialiased), sides rounded to multiples of 16."""
    size = [max(16, round(side * scale / 16) * 16) for side in pixels.shape[-2:]]
    resized = F.interpolate(pixels[None], size=size, mode="bicubic", antialias=True)
    return resized[0].clamp(-1, 1)


def load_pixels(path: Path) -> torch.Tensor:
    """An RGB image as a [3, H, W] float tensor in [-1, 1]."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32)
    if array.shape[0] % 8 or array.shape[1] % 8:
        raise ValueError(f"{path.name} is {array.shape[1]}x{array.shape[0]}: sides must be x8.")
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def load_mask(path: Path, latent_size) -> torch.Tensor:
    """A greyscale mask averaged down to latent resolution: [1, h, w] in [0, 1]."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    mask = torch.from_numpy(array)[None, None]
    return F.interpolate(mask, size=tuple(latent_size), mode="area")[0]
