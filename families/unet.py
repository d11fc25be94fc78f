"""What the UNet families (SDXL, SD 1.5) share: CLIP text encoders, a UNet called on the
latents as they are, kohya names with the original SGM paths."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from families.base import Conditioning, ModelFamily
from families.kohya import kohya_tensors
from families.sgm_names import unet_ldm_names


@dataclass(frozen=True)
class UNetFamily(ModelFamily):
    # Prompt embeddings: the encoders' penultimate hidden states (SDXL) or the last one after
    # the final layer norm (SD 1.5), as the family's pipelines compute them.
    prompt_from_penultimate_layer: bool = False
    # Micro-conditioning time ids the base UNet takes with the pooled text embedding (SDXL:
    # original size, crop top-left, target size). None: the UNet takes neither.
    base_time_ids: int | None = None

    def encode_prompt(self, text_encoders, tokenizers, captions, device) -> Conditioning:
        """Each CLIP encoder's hidden states side by side, and the last encoder's pooled
        (projected) embedding where the family reads the penultimate layer (SDXL)."""
        hidden_states, pooled = [], None
        for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
            ids = token_ids(tokenizer, captions, device)
            if self.prompt_from_penultimate_layer:
                output = encoder(ids, output_hidden_states=True)
                hidden_states.append(output.hidden_states[-2])
                pooled = output[0]  # the last encoder's projected text embedding
            else:
                hidden_states.append(encoder(ids)[0])
        return Conditioning(torch.cat(hidden_states, dim=-1), pooled)

    def denoise(self, denoiser, noisy, time, conditioning, pixel_sizes) -> torch.Tensor:
        added = None
        if self.base_time_ids is not None:
            # The crops come already made: original size = target size, top-left (0, 0).
            rows = [(h, w, 0, 0, h, w) for h, w in pixel_sizes]
            time_ids = torch.tensor(rows, dtype=torch.float32, device=noisy.device)
            added = {"text_embeds": conditioning.pooled, "time_ids": time_ids}
        return denoiser(noisy, time, conditioning.embeds, added_cond_kwargs=added).sample

    def kohya_lora(self, lora, adapters, denoiser) -> dict[str, torch.Tensor]:
        prefixes = {
            self.denoiser: self.kohya_unet_prefix,
            **dict(zip(self.text_encoder_names, self.kohya_text_encoder_prefixes, strict=False)),
        }
        return kohya_tensors(lora, adapters, prefixes)

    def original_layer_names(self, denoiser, layers) -> dict[str, tuple[str, ...]]:
        names = {}
        for key, original in unet_ldm_names(denoiser).items():
            layer = key.removesuffix(".weight")
            if layer in layers:
                names[original.removesuffix(".weight")] = (layer,)
        return names


def token_ids(tokenizer, captions, device, max_length: int | None = None) -> torch.Tensor:
    """Token ids padded (and truncated) to `max_length`, by default the tokenizer's own."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
