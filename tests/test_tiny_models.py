"""The embedded tiny models: real architectures, loaded by the normal path; every family's
rebuilds byte for byte."""

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)

from families import FAMILIES, SD15
from families.tiny_parts import build_tokenizer, clip_vocabulary
from weights.base_models import ModelUnavailableError, load_pipeline, resolve_model
from weights.embedded.tiny import ensure_tiny_model
from weights.runtime import pick_runtime
from weights.settings import TINY

TINY_SD15 = SD15.tiny_model

CPU = pick_runtime("cpu")


def generate(pipeline, seed: int) -> np.ndarray:
    result = pipeline(
        "a photo of a cat",
        num_inference_steps=2,
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return result.images[0]


@pytest.mark.parametrize(
    ("reference", "pipeline_class"),
    [(TINY, StableDiffusionXLPipeline), (TINY_SD15, StableDiffusionPipeline)],
)
def test_tiny_base_loads_and_generates_deterministically(tiny_env, reference, pipeline_class):
    folder = resolve_model(reference, "base", tiny_env)
    pipeline = load_pipeline(pipeline_class, folder, CPU)

    first, again, other = generate(pipeline, 0), generate(pipeline, 0), generate(pipeline, 1)

    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 1e-3


def test_tiny_base_has_sdxl_architecture(tiny_models):
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_models["base"])
    dims = (pipeline.text_encoder.config.hidden_size, pipeline.text_encoder_2.config.hidden_size)
    assert dims[0] != dims[1]  # a swapped concatenation must fail loudly
    assert pipeline.unet.config.cross_attention_dim == sum(dims)
    assert pipeline.unet.config.addition_embed_type == "text_time"
    assert pipeline.vae_scale_factor == 8
    assert pipeline.tokenizer_2.pad_token == "!"
    assert pipeline.tokenizer_2.pad_token_id == 0


def test_tiny_refiner_uses_second_encoder_and_aesthetic_score(tiny_env):
    folder = resolve_model("tiny", "refiner", tiny_env)
    refiner = load_pipeline(StableDiffusionXLImg2ImgPipeline, folder, CPU)
    assert refiner.text_encoder is None and refiner.tokenizer is None
    assert refiner.config.requires_aesthetics_score
    time_ids = refiner.unet.config.projection_class_embeddings_input_dim
    assert time_ids == 5 * refiner.unet.config.addition_time_embed_dim + (
        refiner.text_encoder_2.config.projection_dim
    )

    image = np.random.default_rng(0).random((1, 64, 64, 3)).astype(np.float32)
    result = refiner(
        "a photo of a cat",
        image=image,
        num_inference_steps=10,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    assert result.images[0].shape == (64, 64, 3)


@pytest.mark.parametrize("family", list(FAMILIES.values()), ids=lambda f: f.name)
def test_each_familys_tiny_models_rebuild_byte_for_byte(tmp_path, model_cache, family):
    for role in family.tiny_roles:
        folder = ensure_tiny_model(role, model_cache, family=family.name)
        rebuilt = ensure_tiny_model(role, tmp_path, family=family.name)
        assert _hashes(rebuilt) == _hashes(folder), role


def test_each_tiny_model_is_well_under_20_mb(tiny_models):
    for folder in tiny_models.values():
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        assert size < 16 * 2**20


def test_clip_vocabulary_gives_real_clip_ids(tmp_path):
    import json

    from transformers import CLIPTokenizer

    vocab, merges = clip_vocabulary(49408)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
    full = CLIPTokenizer.from_pretrained(tmp_path)
    real_ids = [49406, 320, 1125, 539, 27010, 525, 518, 2117, 49407]
    assert full("a photo of TOK on the beach").input_ids == real_ids

    tiny = build_tokenizer(pad_token="!")
    assert tiny("a of on the").input_ids[1:-1] == [320, 539, 525, 518]


def test_unreachable_hub_model_fails_fast_with_guidance(tiny_env, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("BASE_MODEL", "someone/not-reachable-sdxl")
    from predict import Predictor

    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as error:
        Predictor().setup()
    assert time.perf_counter() - started < 30
    message = str(error.value)
    assert "someone/not-reachable-sdxl" in message
    assert "BASE_MODEL" in message and "local diffusers folder" in message


def test_local_folder_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(ModelUnavailableError, match="model_index.json"):
        resolve_model(str(tmp_path), "base", tmp_path)


def test_runtime_defaults_to_cpu_fp32_and_accepts_overrides():
    if not torch.cuda.is_available():
        assert pick_runtime() == pick_runtime("cpu", "fp32")
        assert pick_runtime().dtype == torch.float32
    assert pick_runtime("cpu", "bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp32"):
        pick_runtime("cpu", "float8")


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }
