"""Base models in every accepted form load through the same code: a single-file SGM
checkpoint (offline, with a local config folder), a URL of a tar of a diffusers folder,
and a hub id served from a pre-filled HF_HOME with only the fp16 weights."""

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from huggingface_hub.utils import filter_repo_objects
from safetensors import safe_open

from families import SDXL, detect_family
from tests.fileserver import LOCAL
from weights.base_models import (
    ModelUnavailableError,
    _has_variant_weights,
    diffusers_folder,
    hub_file_patterns,
    hub_variant,
    load_pipeline,
    resolve_model,
)
from weights.download import DownloadPolicy
from weights.runtime import pick_runtime
from weights.single_file import export_single_file
from weights.store import ModelStore, StoreError
from weights.trained_files import UnsafeFormatError

CPU = pick_runtime("cpu")


def generate(pipeline) -> np.ndarray:
    return pipeline(
        "a photo of a cat",
        num_inference_steps=2,
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]


@pytest.fixture(scope="module")
def single_file(tiny_models, tmp_path_factory) -> Path:
    return export_single_file(
        tiny_models["base"], tmp_path_factory.mktemp("sf") / "tiny.safetensors"
    )


@pytest.fixture
def store(tmp_path):
    return ModelStore(
        tmp_path / "cache", min_free_bytes=0, policy=DownloadPolicy(progress=False, allowed=LOCAL)
    )


def test_single_file_checkpoint_loads_offline_with_a_local_config(
    tiny_env, tiny_models, single_file, file_server, store
):
    with safe_open(str(single_file), framework="pt") as tensors:  # SGM keys, as shared
        header = set(tensors.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in header
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in header
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in header

    expected = generate(load_pipeline(StableDiffusionXLPipeline, tiny_models["base"], CPU))
    local = resolve_model(str(single_file), "base", tiny_env)
    assert local == single_file
    assert detect_family(local) is SDXL  # read from the tensor names
    pipeline = load_pipeline(
        StableDiffusionXLPipeline, local, CPU, single_file_config=str(tiny_models["base"])
    )
    assert np.array_equal(generate(pipeline), expected)

    url = file_server.add("/models/tiny.safetensors", single_file.read_bytes())
    fetched = resolve_model(url, "base", tiny_env, store=store)
    assert fetched.read_bytes() == single_file.read_bytes()
    assert resolve_model(url, "base", tiny_env, store=store) == fetched  # cached
    assert file_server.requests("/models/tiny.safetensors") == 1


def test_single_file_converts_once_to_a_folder_the_trainer_can_read(
    tiny_models, single_file, tmp_path
):
    folder = diffusers_folder(single_file, tmp_path, single_file_config=str(tiny_models["base"]))
    assert diffusers_folder(folder, tmp_path) == folder  # a folder is used as it is
    converted = (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    original = tiny_models["base"] / "unet" / "diffusion_pytorch_model.safetensors"
    with (
        safe_open(str(original), "pt") as a,
        safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as b,
    ):
        assert set(a.keys()) == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    again = diffusers_folder(single_file, tmp_path, single_file_config=str(tiny_models["base"]))
    assert again == folder
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == converted


def test_refiner_single_file_loads_with_its_own_layout(tiny_env, tiny_models, tmp_path):
    exported = export_single_file(tiny_models["refiner"], tmp_path / "refiner.safetensors")
    with safe_open(str(exported), framework="pt") as tensors:
        assert "conditioner.embedders.0.model.text_projection" in set(tensors.keys())
    refiner = load_pipeline(
        StableDiffusionXLImg2ImgPipeline,
        resolve_model(str(exported), "refiner", tiny_env),
        CPU,
        single_file_config=str(tiny_models["refiner"]),
    )
    original = StableDiffusionXLImg2ImgPipeline.from_pretrained(tiny_models["refiner"])
    assert refiner.text_encoder is None and refiner.config.requires_aesthetics_score
    for name in ("unet", "vae", "text_encoder_2"):
        loaded, expected = getattr(refiner, name).state_dict(), getattr(original, name).state_dict()
        assert loaded.keys() == expected.keys(), name
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), name


def test_url_of_a_diffusers_folder_tarball(tiny_env, tiny_models, file_server, store):
    folder = tiny_models["base"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(folder, arcname="tiny-sdxl")
    url = file_server.add("/tiny-sdxl.tar", buffer.getvalue())

    resolved = resolve_model(url, "base", tiny_env, store=store)
    assert (resolved / "model_index.json").is_file()
    assert _hashes(resolved) == _hashes(folder)
    assert isinstance(
        load_pipeline(StableDiffusionXLPipeline, resolved, CPU), StableDiffusionXLPipeline
    )
    entries = sorted(p.name for p in store.root.iterdir())
    not_a_model = io.BytesIO()
    with tarfile.open(fileobj=not_a_model, mode="w") as archive:
        archive.add(folder / "unet", arcname="unet")  # a model part, no model_index.json
    with pytest.raises(StoreError, match="no model_index.json at its top level"):
        resolve_model(
            file_server.add("/unet.tar", not_a_model.getvalue()), "base", tiny_env, store=store
        )
    assert sorted(p.name for p in store.root.iterdir()) == entries  # refused: not stored


def test_hub_id_from_prefilled_cache_uses_fp16_weights_offline(
    tiny_env, tiny_models, tmp_path, monkeypatch
):
    snapshot = tmp_path / "hf/hub/models--someone--tiny-sdxl/snapshots/0123abcd"
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_models["base"])
    pipeline.to(torch.float16).save_pretrained(snapshot, variant="fp16")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs/main").write_text("0123abcd")
    assert not list(snapshot.glob("*/diffusion_pytorch_model.safetensors"))  # only fp16 files
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    half = pick_runtime("cpu", "fp16")
    folder = resolve_model("someone/tiny-sdxl", "base", tiny_env, variant=hub_variant(half))
    assert folder == snapshot
    loaded = load_pipeline(StableDiffusionXLPipeline, folder, half)
    assert loaded.unet.dtype == torch.float16

    with pytest.raises(ModelUnavailableError, match="someone/other-model"):
        resolve_model("someone/other-model", "base", tiny_env)


def test_hub_download_selects_only_what_the_pipeline_loads():
    sdxl_base_files = [
        "model_index.json",
        "sd_xl_base_1.0.safetensors",
        "sd_xl_offset_example-lora_1.0.safetensors",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/model.onnx",
        "text_encoder/openvino_model.bin",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "vae_1_0/diffusion_pytorch_model.fp16.safetensors",
        "vae_decoder/model.onnx",
    ]
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "image_encoder": [None, None],
    }

    def selected(variant):
        allow, ignore = hub_file_patterns(index, variant)
        return {
            f
            for f in filter_repo_objects(
                sdxl_base_files, allow_patterns=allow, ignore_patterns=ignore
            )
            if f.endswith("safetensors")
        }

    assert selected("fp16") == {
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    }
    assert selected(None) == {
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    }
    allow, ignore = hub_file_patterns(index, None)
    everything = set(
        filter_repo_objects(sdxl_base_files, allow_patterns=allow, ignore_patterns=ignore)
    )
    assert "tokenizer/merges.txt" in everything and "model_index.json" in everything
    assert not any(f.endswith((".bin", ".onnx")) for f in everything)


def test_pickle_checkpoints_are_refused_as_base_models(tiny_env):
    for reference in ("/models/sd_xl_base_1.0.ckpt", "https://example.com/model.pt"):
        with pytest.raises(UnsafeFormatError, match="arbitrary code"):
            resolve_model(reference, "base", tiny_env)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def test_a_hub_model_without_an_fp16_variant_loads_its_full_weights_in_half_precision(
    tiny_env, tiny_models, tmp_path, monkeypatch
):
    snapshot = tmp_path / "hf/hub/models--someone--full-only/snapshots/4567cdef"
    StableDiffusionXLPipeline.from_pretrained(tiny_models["base"]).save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs/main").write_text("4567cdef")
    assert not list(snapshot.glob("*/*.fp16.safetensors"))  # no fp16 variant at all
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    half = pick_runtime("cpu", "fp16")
    folder = resolve_model("someone/full-only", "base", tiny_env, variant=hub_variant(half))
    assert folder == snapshot
    loaded = load_pipeline(StableDiffusionXLPipeline, folder, half)
    assert loaded.unet.dtype == torch.float16  # the full weights, cast
    # What decides the second download online: the fp16 files are missing for some part.
    index = json.loads((snapshot / "model_index.json").read_text())
    assert not _has_variant_weights(snapshot, index, "fp16")
    fp16 = tmp_path / "fp16"
    StableDiffusionXLPipeline.from_pretrained(tiny_models["base"]).save_pretrained(
        fp16, variant="fp16"
    )
    assert _has_variant_weights(fp16, index, "fp16")
    next(fp16.glob("unet/*.fp16.safetensors")).unlink()  # one component without it
    assert not _has_variant_weights(fp16, index, "fp16")
