"""Pretrain the toy FLUX.1 (`BASE_MODEL=toy-flux`): the tiny FLUX.1's transformer trained on
toy scenes (`python -m toyworld.pretrain --family flux`, `make toy-flux-base`).

- The VAE is the toy base's (weights/embedded/toy_weights/vae/: 4 latent channels, 8x), so
  the transformer takes 4 x 2 x 2 = 16 channels per token. Its latents are normalised for
  FLUX.1's pipeline as FLUX.1's are, (latent - shift) x scale, with the shift and scale of the
  training latents (written to toy_flux_weights/vae.json).
- Images are 256 x 256, the FLUX.1 predictor's smallest side: the toy world's 64 x 64 scenes,
  upscaled. A 32 x 32 latent packs into 16 x 16 = 256 tokens, FLUX.1's base sequence length.
- The text encoders are the tiny FLUX.1's CLIP and T5, random and frozen; every distinct
  caption is encoded once.
- The loop is this module's own (the user-facing trainer trains LoRAs on FLUX.1 only): flow
  matching as the family's objective (training/objectives.py), through the family's `denoise`,
  on the scene dataset the toy SDXL's UNet learns from, with 10% caption dropout.
- Guidance: FLUX.1-dev embeds the guidance scale and was distilled from a teacher to follow
  it. There is no teacher here, so each image draws its guidance value uniformly over the
  predictor's range (0-10) and the target does not depend on it: the toy keeps dev's
  guidance embedding (the predictor serves it as dev, and LoRA training's guidance of 1 is
  in range), and draws the same at any guidance, following the prompt by its conditioning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FluxTransformer2DModel
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from families import FLUX, Conditioning
from families.flux1.tiny import FLUX_T5_DIM, build_tiny_flux
from families.tiny_parts import TEXT_ENCODER_DIMS
from formats.dataset_folder import read_captions
from generation.request import FLUX_MIN_SIDE
from toyworld.pretrain import PretrainConfig, write_scene_dataset
from toyworld.recognition import pixel_batch
from training.schedule import seeded
from weights.embedded.toy import save_toy_part
from weights.embedded.toy_flux import (
    TOY_FLUX_WEIGHTS_DIR,
    TOY_VAE_DIR,
    TRANSFORMER,
    VAE_SETTINGS,
)

FLUX_WORK_DIR = Path("outputs/toy-flux-base")
TOY_FLUX_SIZE = FLUX_MIN_SIDE  # the predictor draws no smaller
GUIDANCE_RANGE = (0.0, 10.0)  # the FLUX.1 predictor's guidance_scale range
CHECKPOINT = "transformer-checkpoint.safetensors"
LATENTS = "latents.safetensors"


@dataclass(frozen=True)
class ToyFluxShape:
    """The toy transformer's sizes (the tiny FLUX.1's are 2 + 2 blocks of width 32)."""

    num_layers: int = 2
    num_single_layers: int = 2
    num_attention_heads: int = 2
    attention_head_dim: int = 32
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)  # sums to attention_head_dim

    def build(self, seed: int) -> FluxTransformer2DModel:
        torch.manual_seed(seed)
        return FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * AutoencoderKL.load_config(TOY_VAE_DIR)["latent_channels"],
            joint_attention_dim=FLUX_T5_DIM,
            pooled_projection_dim=TEXT_ENCODER_DIMS[0],
            guidance_embeds=True,
            **dataclasses.asdict(self),
        )


# --- the data: latents and encoded captions ----------------------------------------------------


@torch.no_grad()
def encode_scenes(paths: list[Path], work_dir: Path, batch: int = 32) -> torch.Tensor:
    """The toy VAE's posterior means of the scenes upscaled to TOY_FLUX_SIZE, cached."""
    cache = work_dir / LATENTS
    if cache.is_file():
        return load_file(cache)["latents"]
    vae = AutoencoderKL.from_pretrained(TOY_VAE_DIR, dtype=torch.float32).eval()
    parts = []
    for start in tqdm(range(0, len(paths), batch), desc="latents", unit="batch"):
        images = [upscaled(Image.open(p).convert("RGB")) for p in paths[start : start + batch]]
        parts.append(vae.encode(pixel_batch(images)).latent_dist.mean)
    latents = torch.cat(parts).contiguous()
    save_file({"latents": latents}, cache)
    return latents


def upscaled(scene: Image.Image) -> Image.Image:
    return scene.resize((TOY_FLUX_SIZE, TOY_FLUX_SIZE), Image.Resampling.BICUBIC)


def vae_settings(latents: torch.Tensor) -> dict:
    """FLUX.1's normalisation from the training latents: shift = mean, scale = 1 / std."""
    return dict(
        shift_factor=round(float(latents.mean()), 6),
        scaling_factor=round(float(1.0 / latents.std()), 6),
        sample_size=TOY_FLUX_SIZE,
    )


@torch.no_grad()
def encode_captions(captions: list[str], batch: int = 64) -> dict[str, Conditioning]:
    """Each distinct caption (and the empty one) through the tiny FLUX.1's frozen encoders."""
    tiny = build_tiny_flux()
    encoders = [getattr(tiny, name).eval() for name in FLUX.text_encoder_names]
    tokenizers = [getattr(tiny, name) for name in FLUX.tokenizer_names]
    distinct = list(dict.fromkeys(["", *captions]))
    encoded = {}
    for start in range(0, len(distinct), batch):
        texts = distinct[start : start + batch]
        both = FLUX.encode_prompt(encoders, tokenizers, texts, torch.device("cpu"))
        for index, text in enumerate(texts):
            encoded[text] = Conditioning(both.embeds[index], both.pooled[index])
    return encoded


# --- the transformer ---------------------------------------------------------------------------


class DrawnGuidance(torch.nn.Module):
    """The transformer fed a drawn guidance value per image (the module docstring says why).
    The family's `denoise` reads the config of `.module`, as of accelerate's wrapper."""

    def __init__(self, module: FluxTransformer2DModel, guidance: torch.Tensor):
        super().__init__()
        self.module, self.guidance = module, guidance

    def forward(self, guidance, **inputs):
        return self.module(guidance=self.guidance, **inputs)


@dataclass
class FlowMatchingRun:
    """The pretraining loop's state: data, model, optimizer, and the step reached."""

    config: PretrainConfig
    latents: torch.Tensor  # normalised, [N, C, h, w]
    captions: list[str]
    encoded: dict[str, Conditioning]
    transformer: FluxTransformer2DModel
    optimizer: torch.optim.Optimizer
    step: int = 0

    def loss(self, step: int) -> torch.Tensor:
        """Flow matching on one batch, every draw seeded by (seed, step)."""
        config = self.config
        rng = random.Random(seeded(config.seed, step))
        generator = torch.Generator().manual_seed(seeded(config.seed, step))
        batch = [rng.randrange(len(self.latents)) for _ in range(config.flux_batch_size)]
        texts = ["" if rng.random() < config.caption_dropout else self.captions[i] for i in batch]
        conditioning = Conditioning(
            torch.stack([self.encoded[t].embeds for t in texts]),
            torch.stack([self.encoded[t].pooled for t in texts]),
        )
        latents = self.latents[batch]
        noise = torch.randn(latents.shape, generator=generator)
        sigmas = torch.sigmoid(torch.randn((len(batch),), generator=generator))
        low, high = GUIDANCE_RANGE
        guidance = low + (high - low) * torch.rand((len(batch),), generator=generator)
        t = sigmas.view(-1, 1, 1, 1)
        denoiser = DrawnGuidance(self.transformer, guidance)
        sizes = [(TOY_FLUX_SIZE, TOY_FLUX_SIZE)] * len(batch)
        prediction = FLUX.denoise(
            denoiser, (1 - t) * latents + t * noise, sigmas, conditioning, sizes
        )
        return F.mse_loss(prediction, noise - latents)

    def learning_rate(self, step: int) -> float:
        """A 100-step warm-up, then a cosine decay to 0."""
        config = self.config
        warmup = min(1.0, (step + 1) / 100)
        return config.flux_lr * warmup * 0.5 * (1 + math.cos(math.pi * step / config.flux_steps))

    def train(self, weights_dir: Path, work_dir: Path) -> None:
        bar = tqdm(range(self.step, self.config.flux_steps), desc="transformer", unit="step")
        for step in bar:
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate(step)
            loss = self.loss(step)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.transformer.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step = step + 1
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            if self.step % self.config.flux_save_every == 0 or self.step == self.config.flux_steps:
                save_toy_part(self.transformer, TRANSFORMER, weights_dir)
                self.save_checkpoint(work_dir / CHECKPOINT)

    def save_checkpoint(self, path: Path) -> None:
        """fp32 weights and AdamW's moments, so `--resume` continues exactly."""
        tensors = {f"model.{k}": v for k, v in self.transformer.state_dict().items()}
        names = dict(self.transformer.named_parameters())
        for name, parameter in names.items():
            state = self.optimizer.state.get(parameter)
            if state:
                tensors[f"exp_avg.{name}"] = state["exp_avg"]
                tensors[f"exp_avg_sq.{name}"] = state["exp_avg_sq"]
        save_file(tensors, path.with_suffix(".partial"), metadata={"step": str(self.step)})
        path.with_suffix(".partial").rename(path)

    def load_checkpoint(self, path: Path) -> None:
        tensors = load_file(path)
        self.transformer.load_state_dict(
            {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        )
        self.step = int(_metadata(path)["step"])
        for name, parameter in self.transformer.named_parameters():
            if f"exp_avg.{name}" in tensors:
                self.optimizer.state[parameter] = dict(
                    step=torch.tensor(float(self.step)),
                    exp_avg=tensors[f"exp_avg.{name}"],
                    exp_avg_sq=tensors[f"exp_avg_sq.{name}"],
                )


def _metadata(path: Path) -> dict:
    with safe_open(path, "pt") as file:
        return file.metadata()


def pretrain_toy_flux(
    config: PretrainConfig, work_dir: Path | None, weights_dir: Path | None, resume: bool = False
) -> Path:
    """The transformer from random initialisation (or `resume`d from the work dir's
    checkpoint); writes weights_dir/{transformer, vae.json} and returns weights_dir."""
    work_dir, weights_dir = work_dir or FLUX_WORK_DIR, weights_dir or TOY_FLUX_WEIGHTS_DIR
    work_dir.mkdir(parents=True, exist_ok=True)
    dataset = write_scene_dataset(work_dir / "dataset", config.unet_images, config.seed)
    rows = read_captions(dataset)
    captions = [row.caption for row in rows]
    raw = encode_scenes([row.image_path for row in rows], work_dir)
    settings = vae_settings(raw)
    weights_dir.mkdir(parents=True, exist_ok=True)
    (weights_dir / VAE_SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")
    transformer = ToyFluxShape().build(config.seed)
    run = FlowMatchingRun(
        config,
        latents=(raw - settings["shift_factor"]) * settings["scaling_factor"],
        captions=captions,
        encoded=encode_captions(captions),
        transformer=transformer,
        optimizer=torch.optim.AdamW(transformer.parameters(), lr=config.flux_lr, weight_decay=0.0),
    )
    if resume and (work_dir / CHECKPOINT).is_file():
        run.load_checkpoint(work_dir / CHECKPOINT)
    run.train(weights_dir, work_dir)
    return weights_dir
