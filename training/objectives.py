"""The loss of one micro-batch, by the family's objective:

- `DenoisingObjective`: cached latents noised at a DDPM timestep drawn uniformly, the denoiser
  predicting the noise (or the velocity), optionally min-SNR weighted;
- `FlowMatchingObjective`: rectified flow, noisy = (1 - t) x + t e along a straight path, the
  denoiser predicting e - x, with t drawn logit-normal (sigmoid of a standard normal: most
  draws in the middle, where the path is hardest, as SD3's paper found best and ai-toolkit's
  Flux trainer, which Replicate's runs on, draws them), unweighted.

Both share the batch (latents, flips, masks, captions) and the text conditioning; the family
encodes the prompts and calls its denoiser (packing the latents as it needs). Every random
draw is made for the whole global batch and then sliced, so an image gets the same noise,
timestep, flip and caption whether one process or several share the batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from families import Conditioning
from training.caption_augment import caption_for_step
from training.components import TrainingComponents
from training.config import TrainingConfig
from training.dataset import CachedLatentsDataset


@dataclass
class TrainingObjective:
    config: TrainingConfig
    dataset: CachedLatentsDataset
    captions: list[str]  # with the trained tokens in place of the trigger
    models: TrainingComponents
    denoiser: torch.nn.Module  # as accelerate wrapped it
    text_encoders: list
    device: torch.device
    text_cache: dict = field(default_factory=dict)  # caption -> Conditioning of one

    def loss(self, batch, part: slice, generator, rng, text_trains: bool) -> torch.Tensor:
        """The loss of this process's `part` of the global `batch`."""
        config, dataset = self.config, self.dataset
        # 1. The batch: cached latents (flipped or not), masks, captions.
        flips = [config.flip_augmentation and rng.random() < 0.5 for _ in batch]
        latents = dataset.latents(batch, flips, generator)
        texts = [caption_for_step(self.captions[i], config, rng) for i in batch][part]
        indices, flips = batch[part], flips[part]
        masks = dataset.mask_batch(indices, flips)
        # 2. Text conditioning: through the encoders while anything on the text side
        #    trains, else encoded once per distinct caption and reused.
        if text_trains:
            models = self.models
            conditioning = models.family.encode_prompt(
                self.text_encoders, models.tokenizers, texts, self.device
            )
        else:
            conditioning = self._cached_prompts(texts)
        # 3. Noise, timesteps, prediction and loss, by objective.
        noise = torch.randn(latents.shape, generator=generator)
        pixel_sizes = [dataset.pixel_sizes[i] for i in indices]
        return self.prediction_loss(
            latents, noise, part, generator, conditioning, pixel_sizes, masks
        )

    def prediction_loss(self, latents, noise, part, generator, conditioning, pixel_sizes, masks):
        raise NotImplementedError

    def predict(self, noisy, time, conditioning, pixel_sizes) -> torch.Tensor:
        """The family's denoiser on `noisy` latents, in the latents' layout."""
        return self.models.family.denoise(self.denoiser, noisy, time, conditioning, pixel_sizes)

    def loss_of_draw(self, count: int, part: slice, seed: int, text_trains: bool) -> torch.Tensor:
        """This process's `part` of the loss of `count` images drawn at random (prior
        preservation's class images)."""
        rng = random.Random(seed)
        batch = [rng.randrange(len(self.dataset)) for _ in range(count)]
        return self.loss(batch, part, torch.Generator().manual_seed(seed), rng, text_trains)

    def encode_ahead(self, texts: list[str]) -> None:
        """Encode `texts` into the cache now, so the steps never run the text encoders. One
        at a time: a caption's embedding then does not depend on which others it came with
        (batched matmuls round differently)."""
        for text in dict.fromkeys(texts):
            self._cached_prompts([text])

    @torch.no_grad()
    def _cached_prompts(self, texts: list[str]) -> Conditioning:
        cache, models = self.text_cache, self.models
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            encoded = models.family.encode_prompt(
                models.text_encoders, models.tokenizers, missing, self.device
            )
            for index, text in enumerate(missing):
                pooled = None if encoded.pooled is None else encoded.pooled[index]
                cache[text] = Conditioning(encoded.embeds[index], pooled)
        embeds = torch.stack([cache[t].embeds for t in texts])
        pooled = (
            None
            if cache[texts[0]].pooled is None
            else torch.stack([cache[t].pooled for t in texts])
        )
        return Conditioning(embeds, pooled)


class DenoisingObjective(TrainingObjective):
    def prediction_loss(self, latents, noise, part, generator, conditioning, pixel_sizes, masks):
        config, schedule = self.config, self.models.noise_scheduler
        if config.noise_offset:
            noise += config.noise_offset * torch.randn(
                (*latents.shape[:2], 1, 1), generator=generator
            )
        timesteps = torch.randint(
            0, schedule.config.num_train_timesteps, (len(latents),), generator=generator
        )
        latents, noise = latents[part].to(self.device), noise[part].to(self.device)
        timesteps = timesteps[part].to(self.device)
        noisy = schedule.add_noise(latents, noise, timesteps)
        prediction = self.predict(noisy, timesteps, conditioning, pixel_sizes)
        target = (
            noise
            if schedule.config.prediction_type == "epsilon"
            else schedule.get_velocity(latents, noise, timesteps)
        )
        return diffusion_loss(prediction, target, masks, timesteps, schedule, config)


class FlowMatchingObjective(TrainingObjective):
    def prediction_loss(self, latents, noise, part, generator, conditioning, pixel_sizes, masks):
        sigmas = torch.sigmoid(torch.randn((len(latents),), generator=generator))
        latents, noise = latents[part].to(self.device), noise[part].to(self.device)
        sigmas = sigmas[part].to(self.device)
        t = sigmas.view(-1, 1, 1, 1)
        noisy = (1 - t) * latents + t * noise
        prediction = self.predict(noisy, sigmas, conditioning, pixel_sizes)
        return masked_mse(prediction, noise - latents, masks).mean()


def masked_mse(prediction, target, masks) -> torch.Tensor:
    """MSE per sample, averaged over the mask's area (not over all pixels, which would shrink
    the loss of small subjects)."""
    error = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if masks is None:
        return error.mean(dim=(1, 2, 3))
    masks = masks.to(error.device)
    area = masks.sum(dim=(1, 2, 3)) * error.shape[1]
    return (error * masks).sum(dim=(1, 2, 3)) / area.clamp_min(1e-6)


def diffusion_loss(
    prediction, target, masks, timesteps, schedule, config: TrainingConfig
) -> torch.Tensor:
    """The masked MSE, min-SNR weighted when `min_snr_gamma` > 0."""
    per_sample = masked_mse(prediction, target, masks)
    if config.min_snr_gamma:
        snr = compute_snr(schedule, timesteps)
        weight = snr.clamp(max=config.min_snr_gamma)
        weight = weight / (snr + 1 if schedule.config.prediction_type == "v_prediction" else snr)
        per_sample = per_sample * weight
    return per_sample.mean()


OBJECTIVES = {"denoising": DenoisingObjective, "flow_matching": FlowMatchingObjective}
