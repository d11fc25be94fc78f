"""The training dataset (latents cached once) and token-embedding handling for pivotal tuning,
under the module name existing users import.

Replicate's published recipe for using SDXL fine-tunes in plain diffusers does

    from dataset_and_utils import TokenEmbeddingsHandler
    handler = TokenEmbeddingsHandler([pipe.text_encoder, pipe.text_encoder_2],
                                     [pipe.tokenizer, pipe.tokenizer_2])
    handler.load_embeddings("embeddings.pti")

and then prompts with `<s0><s1>`; that usage works unchanged with this project's bundles.
`embeddings.pti` is a safetensors file with one [n_tokens, hidden] tensor per text encoder
under `text_encoders_0`, `text_encoders_1` (an SD 1.5 bundle: `text_encoders_0` only, loaded
with `TokenEmbeddingsHandler([pipe.text_encoder], [pipe.tokenizer])`). A `None` encoder (the
SDXL refiner has no first text encoder) is skipped.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from families import SDXL


def token_names(count: int) -> list[str]:
    """The inserted tokens, `<s0>`, `<s1>`, ...: the names bundles and prompts use."""
    return [f"<s{i}>" for i in range(count)]


class TokenEmbeddingsHandler:
    def __init__(self, text_encoders: Sequence, tokenizers: Sequence, pti_keys=SDXL.pti_keys):
        self.text_encoders = list(text_encoders)
        self.tokenizers = list(tokenizers)
        self.pti_keys = pti_keys
        self.tokens: list[str] = []
        self.train_ids: list[int] = []
        self._frozen_rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def pairs(self):
        """(index, text encoder, tokenizer) for each encoder that is present."""
        pairs = zip(self.text_encoders, self.tokenizers, strict=True)
        for index, (encoder, tokenizer) in enumerate(pairs):
            if encoder is not None and tokenizer is not None:
                yield index, encoder, tokenizer

    # --- training -------------------------------------------------------------------------

    def initialize_new_tokens(self, count: int, generator: torch.Generator | None = None):
        """Add `count` new tokens to every tokenizer and initialise their embedding rows with
        random vectors at the scale (std) of the existing vocabulary."""
        self.tokens = token_names(count)
        for index, encoder, tokenizer in self.pairs():
            self.train_ids = self._install_tokens(encoder, tokenizer)
            table = self._table(encoder)
            std = table.std().item()
            # Drawn on the CPU so a seed gives the same tokens on every device.
            noise = torch.randn(count, table.shape[1], generator=generator)
            table[self.train_ids] = (noise * std).to(table.device, table.dtype)
            keep = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)
            keep[self.train_ids] = False
            self._frozen_rows[index] = (keep, table[keep].clone())

    def retract_embeddings(self) -> None:
        """Put back every row that is not a trained token (call after each optimizer step: the
        embedding table's gradient touches the whole table under weight decay/momentum)."""
        for index, encoder, _ in self.pairs():
            keep, original = self._frozen_rows[index]
            self._table(encoder)[keep] = original.to(self._table(encoder).dtype)

    def token_vectors(self) -> dict[int, torch.Tensor]:
        """The trained tokens' vectors, per text-encoder index, as float32 on the CPU."""
        return {
            index: self._table(encoder)[self.train_ids].detach().float().cpu().clone()
            for index, encoder, _ in self.pairs()
        }

    def save_embeddings(self, file_path) -> None:
        vectors = self.token_vectors()
        save_file({self.pti_keys[i]: v.contiguous() for i, v in vectors.items()}, str(file_path))

    # --- inference --------------------------------------------------------------------------

    def load_embeddings(self, file_path) -> None:
        """Install the tokens of an `embeddings.pti` file into the tokenizers and encoders."""
        with safe_open(str(file_path), framework="pt", device="cpu") as tensors:
            vectors = {i: tensors.get_tensor(self.pti_keys[i]) for i, _, _ in self.pairs()}
        self.load_vectors(vectors)

    def load_vectors(self, vectors: dict[int, torch.Tensor]) -> None:
        counts = {v.shape[0] for v in vectors.values()}
        if len(counts) != 1:
            raise ValueError(f"Token embeddings disagree on the number of tokens: {counts}.")
        self.tokens = token_names(counts.pop())
        for index, encoder, tokenizer in self.pairs():
            table = self._table(encoder)
            if vectors[index].shape[1] != table.shape[1]:
                raise ValueError(
                    f"Token embeddings for text encoder {index} have width "
                    f"{vectors[index].shape[1]}, but the encoder's is {table.shape[1]}: "
                    "they were trained for another base model."
                )
            self.train_ids = self._install_tokens(encoder, tokenizer)
            self._table(encoder)[self.train_ids] = vectors[index].to(table.device, table.dtype)

    # --- internals --------------------------------------------------------------------------

    def _install_tokens(self, encoder, tokenizer) -> list[int]:
        tokenizer.add_tokens(self.tokens, special_tokens=True)
        if encoder.get_input_embeddings().weight.shape[0] < len(tokenizer):
            # The new rows are overwritten right after: skip transformers' mean/covariance init.
            encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        return tokenizer.convert_tokens_to_ids(self.tokens)

    @staticmethod
    def _table(encoder) -> torch.Tensor:
        return encoder.get_input_embeddings().weight.data


# --- the training dataset -------------------------------------------------------------------

CAPTIONS_FILE = "captions.csv"
CAPTION_COLUMNS = ("image_path", "mask_path", "caption")


@dataclass(frozen=True)
class CaptionedImage:
    image_path: Path
    mask_path: Path | None  # greyscale, white = the subject; None: every pixel counts
    caption: str


def read_captions(folder: Path) -> list[CaptionedImage]:
    """The rows of a prepared dataset's `captions.csv` (paths relative to `folder`)."""
    folder = Path(folder)
    table = folder / CAPTIONS_FILE
    if not table.is_file():
        raise FileNotFoundError(f"{table} is missing: the prepared dataset has no captions.csv.")
    with table.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = set(CAPTION_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{table} lacks the column(s) {', '.join(sorted(missing))}.")
        rows = list(reader)
    items = []
    for row in rows:
        image = folder / row["image_path"]
        mask = folder / row["mask_path"] if row["mask_path"] else None
        for path in (image, mask):
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"{table} names {path.name}, which is not in {folder}.")
        items.append(CaptionedImage(image, mask, row["caption"]))
    if not items:
        raise ValueError(f"{table} lists no images: there is nothing to train on.")
    return items


class CachedLatentsDataset:
    """Every training image encoded by the VAE once (and once more mirrored when flips are on).

    The VAE's latent distribution (mean, std) is kept, so each step still draws a fresh latent
    sample without running the encoder again. Masks are kept at latent resolution.
    """

    def __init__(self, items: list[CaptionedImage], vae, flip: bool, use_masks: bool):
        self.captions = [item.caption for item in items]
        self.pixel_sizes: list[tuple[int, int]] = []
        self.means, self.stds, self.masks = [], [], []
        self.flipped: tuple[list, list] | None = ([], []) if flip else None
        self.scaling_factor = vae.config.scaling_factor
        for item in items:
            pixels = load_pixels(item.image_path)
            self.pixel_sizes.append(tuple(pixels.shape[-2:]))
            mean, std = self._encode(vae, pixels)
            self.means.append(mean)
            self.stds.append(std)
            if self.flipped is not None:
                mean, std = self._encode(vae, pixels.flip(-1))
                self.flipped[0].append(mean)
                self.flipped[1].append(std)
            self.masks.append(
                load_mask(item.mask_path, mean.shape[-2:]) if use_masks and item.mask_path else None
            )

    def __len__(self) -> int:
        return len(self.captions)

    def buckets(self) -> dict[tuple[int, int], list[int]]:
        """Indices of the images of each pixel size (one size without aspect buckets)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(self.pixel_sizes):
            groups.setdefault(size, []).append(index)
        return groups

    def latents(self, indices, flips, generator: torch.Generator) -> torch.Tensor:
        """A batch of latents sampled from the cached distributions (scaled for the UNet)."""
        means, stds = [], []
        for index, flip in zip(indices, flips, strict=True):
            source = self.flipped if flip else (self.means, self.stds)
            means.append(source[0][index])
            stds.append(source[1][index])
        mean, std = torch.stack(means), torch.stack(stds)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return (mean + std * noise) * self.scaling_factor

    def mask_batch(self, indices, flips) -> torch.Tensor | None:
        """Masks [B, 1, h, w] in [0, 1], or None when no image of the batch has one."""
        if all(self.masks[i] is None for i in indices):
            return None
        masks = []
        for index, flip in zip(indices, flips, strict=True):
            mask = self.masks[index]
            if mask is None:
                mask = torch.ones((1, *self.means[index].shape[-2:]))
            masks.append(mask.flip(-1) if flip else mask)
        return torch.stack(masks)

    @staticmethod
    @torch.no_grad()
    def _encode(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = pixels[None].to(vae.device, vae.dtype)
        distribution = vae.encode(batch).latent_dist
        return distribution.mean[0].float().cpu(), distribution.std[0].float().cpu()


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
