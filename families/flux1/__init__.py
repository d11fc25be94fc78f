"""FLUX.1 (dev and schnell): a rectified-flow transformer on 2x2-packed latents, CLIP-L for
the pooled embedding and T5-XXL for the sequence, guidance distilled into the model (dev).
Its LoRA files for other tools use BFL's names, whose fused layers stand for several of
diffusers' (bfl_names.py, bfl_export.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from families.base import Conditioning, ModelFamily
from families.flux1.bfl_export import to_bfl_kohya
from families.flux1.bfl_names import BLOCKS, fused_parts
from families.unet import token_ids

# The embedded guidance while training: 1, as ai-toolkit trains FLUX.1-dev (the LoRA then
# follows whatever guidance the user generates with).
TRAINING_GUIDANCE = 1.0

# The modules of the 19 double-stream and 38 single-stream blocks a LoRA trains: every
# attention projection and MLP (as Replicate's / ai-toolkit's Flux trainer), not the
# modulation layers, the embedders or the final projection.
LORA_TARGETS = (
    r"(transformer_blocks\.\d+\.(attn\.(to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)"
    r"|ff(_context)?\.net\.(0\.proj|2))"
    r"|single_transformer_blocks\.\d+\.(attn\.to_[qkv]|proj_mlp|proj_out))"
)


@dataclass(frozen=True)
class FluxFamily(ModelFamily):
    # Tokens of T5's prompt: FLUX.1-dev's 512 (schnell was distilled at 256).
    max_sequence_length: int = 512
    # The transformer's layers in BFL's names (bfl_names.py): diffusers block list -> (BFL
    # block list, diffusers module suffix -> (BFL module, part, parts)).
    bfl_blocks: dict = field(default_factory=lambda: BLOCKS, hash=False, compare=False)

    def encode_prompt(self, text_encoders, tokenizers, captions, device) -> Conditioning:
        """T5's last hidden state over `max_sequence_length` tokens, CLIP's pooled output."""
        (clip_tokenizer, t5_tokenizer), (clip, t5) = tokenizers, text_encoders
        t5_ids = token_ids(t5_tokenizer, captions, device, self.max_sequence_length)
        embeds = t5(t5_ids)[0]
        return Conditioning(embeds, clip(token_ids(clip_tokenizer, captions, device)).pooler_output)

    def denoise(self, denoiser, noisy, time, conditioning, pixel_sizes) -> torch.Tensor:
        """The transformer on the latents packed 2x2 into tokens, with their position ids;
        `time` is the sigma (the pipeline passes timestep / 1000)."""
        from diffusers import FluxPipeline  # the pipeline's own packing and position ids

        batch, channels, height, width = noisy.shape
        device, embeds = noisy.device, conditioning.embeds
        guidance = None
        if getattr(denoiser, "module", denoiser).config.guidance_embeds:  # dev, not schnell
            guidance = torch.full((batch,), TRAINING_GUIDANCE, device=device)
        prediction = denoiser(
            hidden_states=FluxPipeline._pack_latents(noisy, batch, channels, height, width),
            timestep=time,
            guidance=guidance,
            pooled_projections=conditioning.pooled,
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=device),
            img_ids=FluxPipeline._prepare_latent_image_ids(
                batch, height // 2, width // 2, device, noisy.dtype
            ),
            return_dict=False,
        )[0]
        return unpack_latents(prediction, height, width)

    def kohya_lora(self, lora, adapters, denoiser) -> dict[str, torch.Tensor]:
        """BFL's names (ComfyUI, Forge): fused layers as one LoRA each (bfl_export.py)."""
        widths = {  # PEFT wraps each trained layer: its linear is `<name>.base_layer`
            f"{self.denoiser}.{name.removesuffix('.base_layer')}": module.out_features
            for name, module in denoiser.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
        alpha = adapters[f"{self.denoiser}.lora_alpha"]
        return to_bfl_kohya(lora, alpha, widths, self.kohya_unet_prefix, self.bfl_blocks)

    def original_layer_names(self, denoiser, layers) -> dict[str, tuple[str, ...]]:
        """BFL's names, a fused layer standing for its parts (`double_blocks.0.img_attn_qkv`
        = to_q, to_k, to_v)."""
        names = {}
        for block_list, (bfl_block_list, table) in self.bfl_blocks.items():
            for index in range(len(getattr(denoiser, block_list, ()))):
                for fused, suffixes in fused_parts(table).items():
                    parts = tuple(f"{block_list}.{index}.{suffix}" for suffix in suffixes)
                    if all(part in layers for part in parts):
                        names[f"{bfl_block_list}.{index}.{fused}"] = parts
        return names

    def build_tiny(self, role: str):
        from families.flux1.tiny import build_tiny_flux

        return build_tiny_flux()

    def served_variant(self, pipeline) -> str | None:
        """dev embeds the guidance scale (guidance-distilled), schnell (timestep-distilled)
        does not."""
        return "dev" if pipeline.transformer.config.guidance_embeds else "schnell"


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, (h/2)(w/2), 4C] tokens back to [B, C, h, w] latents (the inverse of 2x2 packing)."""
    batch, _, features = packed.shape
    grid = packed.view(batch, height // 2, width // 2, features // 4, 2, 2)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(batch, features // 4, height, width)


FLUX = FluxFamily(
    name="flux",
    title="FLUX.1",
    container="flux",
    text_encoder_dims=(768, 4096),  # CLIP-L (pooled), T5-XXL (sequence)
    text_encoder_classes=("CLIPTextModel", "T5EncoderModel"),
    tokenizer_classes=("CLIPTokenizer", "T5TokenizerFast"),
    denoiser="transformer",
    denoiser_class="FluxTransformer2DModel",
    objective="flow_matching",
    native_resolution=1024,
    pixel_multiple=16,  # the VAE's 8, times 2 for the 2x2 latent packing
    default_base_model="black-forest-labs/FLUX.1-dev",
    txt2img_pipeline="FluxPipeline",
    img2img_pipeline="FluxImg2ImgPipeline",
    inpaint_pipeline="FluxInpaintPipeline",
    # Guidance is distilled into the model and the scheduler is fixed.
    negative_prompt=False,
    named_schedulers=False,
    img2img_takes_size=True,  # its img2img pipeline otherwise resizes to its default size
    full_fine_tune=False,
    text_encoder_lora=False,
    lora_methods=("lora",),
    lora_target_modules=LORA_TARGETS,
    kohya_unet_prefix="lora_unet",
    kohya_text_encoder_prefixes=("lora_te1", "lora_te2"),
    other_tools="ComfyUI / Forge",
    kohya_file_use=(
        "the LoRA in BFL / kohya names (`models/loras/` in ComfyUI and Forge), loaded on the "
        "FLUX.1 model with a LoRA loader."
    ),
    # BFL's transformer, alone or under ComfyUI's prefix.
    single_file_prefixes=("double_blocks.", "model.diffusion_model.double_blocks."),
    # Its transformer blocks in the diffusers and the BFL / kohya names.
    weight_name_markers=(
        "single_transformer_blocks.",
        "transformer.transformer_blocks.",
        "double_blocks.",
        "double_blocks_",
        "single_blocks_",
    ),
    marker_priority=1,  # its block names contain SDXL's `transformer_blocks.1.`
    tiny_model="tiny-flux",
)
