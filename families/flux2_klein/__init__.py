"""FLUX.2 [klein]: a rectified-flow transformer on VAE latents patchified 2x2 and normalised by
the VAE's batch-norm statistics, packed into tokens with 4-D positions (t, h, w, l); a Qwen3
causal LM whose hidden states of three layers, side by side, are the prompt; no pooled text
embedding and no embedded guidance. Two variants share the layout: the step-distilled model
(4 steps, no guidance) and the base (50 steps, classifier-free guidance). Its pipelines take
reference images to edit from. Its LoRA files for other tools use BFL's FLUX.2 names, as
FLUX.1's use FLUX.1's (bfl_names.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from families.base import Conditioning
from families.flux1 import FluxFamily
from families.flux2_klein.bfl_names import BLOCKS

# The Qwen3 hidden states the pipelines stack into the prompt embedding (Flux2KleinPipeline's
# `text_encoder_out_layers` default), and the tokens every prompt is padded to.
PROMPT_LAYERS = (9, 18, 27)
MAX_SEQUENCE_LENGTH = 512

# The modules of the double- and single-stream blocks a LoRA trains: every attention
# projection and MLP of both streams (as ai-toolkit trains FLUX.2 [klein]; diffusers' script
# trains the image stream's attention and the single blocks), not the shared modulation, the
# embedders or the final projection.
LORA_TARGETS = (
    r"(transformer_blocks\.\d+\.(attn\.(to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)"
    r"|ff(_context)?\.linear_(in|out))"
    r"|single_transformer_blocks\.\d+\.attn\.(to_qkv_mlp_proj|to_out))"
)


@dataclass(frozen=True)
class BatchNormLatents:
    """FLUX.2's latent normalisation: a [B, C, h, w] VAE sample patchified 2x2 into
    [B, 4C, h/2, w/2], minus the VAE batch norm's running mean, over its running std."""

    mean: torch.Tensor  # [1, 4C, 1, 1]
    std: torch.Tensor

    @classmethod
    def of(cls, vae) -> BatchNormLatents:
        mean = vae.bn.running_mean.detach().float().cpu().view(1, -1, 1, 1)
        variance = vae.bn.running_var.detach().float().cpu().view(1, -1, 1, 1)
        return cls(mean, torch.sqrt(variance + vae.config.batch_norm_eps))

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        from diffusers import Flux2KleinPipeline  # the pipeline's own 2x2 patch layout

        patches = Flux2KleinPipeline._patchify_latents(latents)
        return (patches - self.mean.to(patches)) / self.std.to(patches)


@dataclass(frozen=True)
class Flux2KleinFamily(FluxFamily):
    prompt_layers: tuple[int, ...] = PROMPT_LAYERS

    def training_latents(self, vae) -> BatchNormLatents:
        return BatchNormLatents.of(vae)

    def encode_prompt(self, text_encoders, tokenizers, captions, device) -> Conditioning:
        """Each caption in Qwen3's chat template, padded to 512 tokens; the hidden states of
        `prompt_layers` side by side (the pipelines' own encoding)."""
        from diffusers import Flux2KleinPipeline

        (encoder,), (tokenizer,) = text_encoders, tokenizers
        embeds = Flux2KleinPipeline._get_qwen3_prompt_embeds(
            encoder,
            tokenizer,
            captions,
            device=device,
            max_sequence_length=self.max_sequence_length,
            hidden_states_layers=self.prompt_layers,
        )
        return Conditioning(embeds)

    def denoise(self, denoiser, noisy, time, conditioning, pixel_sizes) -> torch.Tensor:
        """The transformer on the latents packed into tokens (one per latent position), with
        their 4-D position ids and the text's; `time` is the sigma (the pipelines pass
        timestep / 1000)."""
        from diffusers import Flux2KleinPipeline

        batch, channels, height, width = noisy.shape
        embeds = conditioning.embeds
        prediction = denoiser(
            hidden_states=Flux2KleinPipeline._pack_latents(noisy),
            encoder_hidden_states=embeds,
            timestep=time,
            img_ids=Flux2KleinPipeline._prepare_latent_ids(noisy[:1]).to(noisy.device),
            txt_ids=Flux2KleinPipeline._prepare_text_ids(embeds[:1]).to(noisy.device),
            guidance=None,
            return_dict=False,
        )[0]
        # Tokens are in raster order: back to [B, C, h, w] by a transpose.
        return prediction.transpose(1, 2).reshape(batch, channels, height, width)

    def shared_pipeline_options(self, pipeline) -> dict:
        return {"is_distilled": pipeline.config.is_distilled}

    def served_variant(self, pipeline) -> str | None:
        """The step-distilled model (4 steps, guidance ignored) or the base (50 steps with
        classifier-free guidance), as the pipeline's config records it."""
        return "distilled" if pipeline.config.is_distilled else "base"

    def matches_denoiser_config(self, config) -> bool:
        """FLUX.2's transformer without guidance embedding (FLUX.2 [dev] embeds it)."""
        return super().matches_denoiser_config(config) and not config.get("guidance_embeds", True)

    def build_tiny(self, role: str):
        from families.flux2_klein.tiny import build_tiny_klein

        return build_tiny_klein()


KLEIN = Flux2KleinFamily(
    name="flux2_klein",
    title="FLUX.2 [klein]",
    container="klein",
    text_encoder_dims=(2560,),  # Qwen3-4B's hidden size (three layers: 7680 features)
    text_encoder_classes=("Qwen3ForCausalLM",),
    tokenizer_classes=("Qwen2TokenizerFast",),
    denoiser="transformer",
    denoiser_class="Flux2Transformer2DModel",
    vae_class="AutoencoderKLFlux2",
    objective="flow_matching",
    native_resolution=1024,
    pixel_multiple=16,  # the VAE's 8, times 2 for the 2x2 patches
    default_base_model="black-forest-labs/FLUX.2-klein-4B",
    txt2img_pipeline="Flux2KleinPipeline",
    # Editing is the text-to-image pipeline given reference images; there is no img2img one.
    img2img_pipeline="Flux2KleinPipeline",
    inpaint_pipeline="Flux2KleinInpaintPipeline",
    negative_prompt=False,  # the base variant's guidance uses the empty prompt
    named_schedulers=False,
    image_is_reference=True,
    reference_keywords={"txt2img": "image", "inpaint": "image_reference"},
    full_fine_tune=False,
    text_encoder_lora=False,
    lora_methods=("lora",),
    lora_target_modules=LORA_TARGETS,
    kohya_unet_prefix="lora_unet",
    kohya_text_encoder_prefixes=("lora_te",),  # ComfyUI's name for a single Qwen3 encoder
    other_tools="ComfyUI",
    kohya_file_use=(
        "the LoRA in BFL / kohya names (`models/loras/` in ComfyUI), loaded on the FLUX.2 "
        "[klein] model with a LoRA loader."
    ),
    # Names only its LoRAs have (FLUX.1's single blocks have no fused projection, its MLPs
    # are `ff.net`); files in BFL's names are FLUX.1's by name (flux1).
    weight_name_markers=("to_qkv_mlp_proj", ".ff.linear_in.", ".ff_context.linear_in."),
    marker_priority=2,  # its diffusers names contain FLUX.1's markers too
    tiny_model="tiny-flux2-klein",
    max_sequence_length=MAX_SEQUENCE_LENGTH,
    bfl_blocks=BLOCKS,
)
