"""The embedded tiny SD 1.5: SD 1.5's architecture, reproducible (generation: test_tiny_models)."""

import pytest
import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline
from safetensors.torch import save_file

from families import SD15, SDXL, detect_family
from tests.test_tiny_models import _hashes
from weights.base_models import resolve_model
from weights.embedded.tiny import ensure_tiny_model

TINY_SD15 = SD15.tiny_model


def test_tiny_sd15_has_sd15_architecture(tiny_env, tiny_sd15_model):
    assert resolve_model(TINY_SD15, "base", tiny_env) == tiny_sd15_model
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd15_model)
    unet = pipeline.unet.config
    assert unet.addition_embed_type is None
    assert unet.cross_attention_dim == pipeline.text_encoder.config.hidden_size
    assert list(unet.down_block_types) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert pipeline.vae_scale_factor == 8
    assert pipeline.vae.config.scaling_factor == 0.18215
    assert isinstance(pipeline.scheduler, PNDMScheduler)
    assert pipeline.scheduler.config.skip_prk_steps and pipeline.scheduler.config.steps_offset == 1
    assert pipeline.safety_checker is None and not pipeline.config.requires_safety_checker


def test_tiny_sd15_rebuilds_byte_for_byte_and_stays_small(tmp_path, tiny_sd15_model):
    rebuilt = ensure_tiny_model("base", tmp_path, family="sd15")
    assert _hashes(rebuilt) == _hashes(tiny_sd15_model)
    assert sum(f.stat().st_size for f in rebuilt.rglob("*") if f.is_file()) < 16 * 2**20


def test_detect_family_tells_the_tiny_models_apart(tiny_sd15_model, tiny_models):
    assert detect_family(tiny_sd15_model) is SD15
    assert detect_family(tiny_models["base"]) is SDXL


def test_tiny_sd15_has_no_refiner(tmp_path):
    with pytest.raises(ValueError, match="no tiny sd15 'refiner'"):
        resolve_model(TINY_SD15, "refiner", tmp_path)


def test_sd15_embeddings_file_loads_in_stock_textual_inversion(tiny_sd15_model, tmp_path):
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd15_model)
    width = pipeline.text_encoder.config.hidden_size
    vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(0))
    (key,) = SD15.embedding_keys
    save_file({key: vectors}, str(tmp_path / "embeddings.safetensors"))

    pipeline.load_textual_inversion(tmp_path / "embeddings.safetensors", token="<s0>")

    ids = pipeline.tokenizer.convert_tokens_to_ids(["<s0>", "<s0>_1"])
    table = pipeline.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[ids], vectors)
