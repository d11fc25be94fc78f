"""FLUX.2 [klein] beyond what every family passes (tests/test_every_family.py): its tiny model
is made of the real classes; prompts, latents and the transformer's call in training are
exactly the pipelines'; its LoRA in ComfyUI's FLUX.2 names reads back as the same LoRA; its
container edits from reference images and inpaints with them; its inputs and the variant it
serves; a training request over Cog's real server."""

from __future__ import annotations

import base64
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKLFlux2,
    Flux2KleinInpaintPipeline,
    Flux2KleinPipeline,
    Flux2Transformer2DModel,
)
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import Qwen2TokenizerFast, Qwen3ForCausalLM

from families import FLUX, UnknownFamilyError, detect_family, family_from_weight_names
from families.flux2_klein import KLEIN
from families.flux2_klein.container.request import KleinGenerationRequest
from formats.bundle import BUNDLE_FILE, LORA_FILE, LORA_KOHYA_FILE, TRAINING_CONFIG_FILE
from generation.request import InvalidRequestError
from serving.containers import CONTAINERS, load_entry
from tests.cog_server import request_when_free, running_server
from tests.conftest import tiny_variables
from tests.predict_helpers import one_torch_thread
from tests.test_declared_inputs import FLUX_PREDICT_LEFT_OUT, assert_agree, declared_fields
from tests.test_every_family import predict
from tests.train_helpers import make_dataset, small_config
from training.flux_inputs import FluxTrainingInputs
from training.loop import run_training
from weights.embedded.tiny import ensure_tiny_model
from weights.runtime import pick_runtime

CPU = pick_runtime("cpu")
ROOT = Path(__file__).resolve().parents[1]
SUBJECT = "a photo of TOK, a red square"


@pytest.fixture(scope="module", autouse=True)
def threads():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def tiny_klein(model_cache) -> Path:
    return ensure_tiny_model("base", model_cache, family=KLEIN.name)


@pytest.fixture(scope="module")
def pipeline(tiny_klein) -> Flux2KleinPipeline:
    loaded = Flux2KleinPipeline.from_pretrained(tiny_klein)
    loaded.set_progress_bar_config(disable=True)
    return loaded


@pytest.fixture(scope="module")
def trained(tiny_klein, tmp_path_factory) -> Path:
    """The weights folder of a LoRA trained on the red square."""
    dataset = make_dataset(tmp_path_factory.mktemp("dataset"), masks=False)
    config = small_config(ti_lr=0.0, lora_lr=3e-2, max_train_steps=12)
    work = tmp_path_factory.mktemp("klein-run")
    return run_training(config, dataset, tiny_klein, work, CPU, family=KLEIN).weights_dir


@pytest.fixture(scope="module")
def predictor(model_cache, tiny_klein):
    with pytest.MonkeyPatch.context() as env:
        for variable, value in tiny_variables(model_cache).items():
            env.setenv(variable, value)
        env.setenv("BASE_MODEL", KLEIN.tiny_model)
        made = load_entry(CONTAINERS["klein"].predictor)()
        made.setup(None)
    return made


# --- the tiny model ------------------------------------------------------------------------------


def test_the_tiny_klein_is_made_of_the_real_classes(pipeline, tiny_klein):
    assert detect_family(tiny_klein) is KLEIN
    assert isinstance(pipeline.transformer, Flux2Transformer2DModel)
    assert isinstance(pipeline.vae, AutoencoderKLFlux2)
    assert isinstance(pipeline.text_encoder, Qwen3ForCausalLM)
    assert isinstance(pipeline.tokenizer, Qwen2TokenizerFast)
    assert pipeline.config.is_distilled and not pipeline.transformer.config.guidance_embeds
    # The prompt is three Qwen3 layers side by side, and layer 27 is not the last one.
    hidden = pipeline.text_encoder.config.hidden_size
    assert pipeline.transformer.config.joint_attention_dim == 3 * hidden
    assert pipeline.text_encoder.config.num_hidden_layers > max(KLEIN.prompt_layers)
    # The 2x2 patches of the VAE's latents are the transformer's channels.
    bn = pipeline.vae.bn
    assert pipeline.transformer.config.in_channels == bn.num_features
    assert bn.running_mean.abs().min() > 0 and (bn.running_var - 1).abs().min() > 0
    size = sum(f.stat().st_size for f in tiny_klein.rglob("*") if f.is_file())
    assert size < 16 * 2**20


def test_its_tokenizer_renders_qwen3s_chat_template(pipeline):
    tokenizer = pipeline.tokenizer
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "a cat"}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )
    assert text == (
        "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    for token in ("<|im_start|>", "<|im_end|>", "<think>", "</think>"):
        assert len(tokenizer(token).input_ids) == 1, token
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.decode(tokenizer("a photo of TOK").input_ids) == "a photo of TOK"


def test_training_encodes_normalises_and_denoises_exactly_as_the_pipelines(pipeline):
    """The same operations in the same order: equal to the bit."""
    captions = [SUBJECT, "a cat"]
    with torch.no_grad():
        conditioning = KLEIN.encode_prompt(
            [pipeline.text_encoder], [pipeline.tokenizer], captions, "cpu"
        )
        embeds, text_ids = pipeline.encode_prompt(captions)
        assert torch.equal(conditioning.embeds, embeds)

        pixels = torch.rand((2, 3, 64, 64), generator=torch.Generator().manual_seed(0)) * 2 - 1
        mean = pipeline.vae.encode(pixels).latent_dist.mean
        latents = KLEIN.training_latents(pipeline.vae)(mean)
        assert torch.equal(latents, pipeline._encode_vae_image(pixels, None))  # argmax: the mean

        noisy, sigmas = torch.randn_like(latents), torch.tensor([0.3, 0.8])
        ours = KLEIN.denoise(pipeline.transformer, noisy, sigmas, conditioning, [(64, 64)] * 2)
        ids = pipeline._prepare_latent_ids(noisy)
        tokens = pipeline.transformer(
            hidden_states=pipeline._pack_latents(noisy),
            encoder_hidden_states=embeds,
            timestep=sigmas,
            img_ids=ids,
            txt_ids=text_ids,
            return_dict=False,
        )[0]
        assert torch.equal(ours, pipeline._unpack_latents_with_ids(tokens, ids))


def test_klein_is_told_from_its_configs_and_its_lora_names(tiny_klein, tmp_path):
    folder = tmp_path / "model"
    (folder / "transformer").mkdir(parents=True)
    config = json.loads((tiny_klein / "transformer" / "config.json").read_text())
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    assert detect_family(folder) is KLEIN  # no model_index.json: the transformer's config
    # FLUX.2 [dev] has the same transformer class, with guidance embedding: not klein.
    (folder / "transformer" / "config.json").write_text(
        json.dumps({**config, "guidance_embeds": True})
    )
    with pytest.raises(UnknownFamilyError):
        detect_family(folder)
    lora = "transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj.lora_A.weight"
    assert family_from_weight_names([lora]) is KLEIN
    flux_lora = "transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight"
    assert family_from_weight_names([flux_lora]) is FLUX


# --- the LoRA in other tools' names ------------------------------------------------------------


def test_its_kohya_file_has_comfyuis_flux2_names(trained, pipeline):
    """ComfyUI names a LoRA layer `lora_unet_` + the BFL checkpoint's path (comfy/lora.py
    model_lora_keys_unet): the fused q/k/v of each stream, the projections, the SwiGLU MLP's
    two layers, and a single block's linear1 / linear2."""
    kohya = load_file(str(trained / LORA_KOHYA_FILE))
    double = ("img_attn_qkv", "img_attn_proj", "txt_attn_qkv", "txt_attn_proj")
    double += ("img_mlp_0", "img_mlp_2", "txt_mlp_0", "txt_mlp_2")
    expected = {
        *(f"lora_unet_double_blocks_{i}_{layer}" for i in range(2) for layer in double),
        *(
            f"lora_unet_single_blocks_{i}_{layer}"
            for i in range(2)
            for layer in ("linear1", "linear2")
        ),
    }
    assert {key.split(".")[0] for key in kohya} == expected
    assert {key.split(".", 1)[1] for key in kohya} == {
        "lora_down.weight",
        "lora_up.weight",
        "alpha",
    }
    inner = pipeline.transformer.config.num_attention_heads * 16
    assert kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape[0] == 3 * inner


def test_its_kohya_file_reads_back_in_diffusers_as_the_same_lora(trained):
    """diffusers' reader of kohya-named FLUX.2 LoRAs (written from BFL's names) gives every
    layer the change lora.safetensors gives it: the fused q/k/v splits back into its parts."""
    ours = load_file(str(trained / LORA_FILE))
    with safe_open(str(trained / LORA_FILE), "pt") as opened:
        alpha = json.loads(opened.metadata()[LORA_ADAPTER_METADATA_KEY])["transformer.lora_alpha"]
    read = Flux2KleinPipeline.lora_state_dict(str(trained / LORA_KOHYA_FILE))
    modules = {k.removesuffix(".lora_A.weight") for k in ours if k.endswith(".lora_A.weight")}
    assert {k.removesuffix(".lora_A.weight") for k in read if ".lora_A." in k} == modules
    for module in modules:
        down, up = ours[f"{module}.lora_A.weight"], ours[f"{module}.lora_B.weight"]
        expected = up @ down * (alpha / down.shape[0])
        got = read[f"{module}.lora_B.weight"] @ read[f"{module}.lora_A.weight"]
        # The same products of float32 factors, scaled at another point: a few ulps apart.
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7), module


# --- generation ----------------------------------------------------------------------------------


def photo(size: tuple[int, int], colour, seed: int) -> Image.Image:
    pixels = np.full((size[1], size[0], 3), colour, np.uint8)
    noise = np.random.default_rng(seed).integers(-30, 30, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def stock(pipeline, **arguments) -> np.ndarray:
    """diffusers' own pipeline as the container calls it (one output, seed 3)."""
    image = pipeline(
        prompt=[SUBJECT],
        guidance_scale=1.0,
        generator=torch.Generator("cpu").manual_seed(3),
        **arguments,
    ).images[0]
    return np.asarray(image).astype(int)


def test_editing_hands_the_reference_images_to_klein_pipeline(predictor, pipeline, tmp_path):
    references = [photo((256, 256), (200, 40, 40), 1), photo((192, 320), (40, 200, 40), 2)]
    paths = []
    for index, reference in enumerate(references):
        paths.append(tmp_path / f"reference{index}.png")
        reference.save(paths[-1])
    (plain,) = predict(predictor, "klein", prompt=SUBJECT)
    (edited,) = predict(predictor, "klein", prompt=SUBJECT, images=paths)
    assert edited.shape == plain.shape == (256, 256, 3)  # aspect_ratio's size, not theirs
    # The references change the image (a random tiny transformer attends little to them:
    # measured 0.27 levels on average), exactly as diffusers' pipeline given them does.
    assert not np.array_equal(edited, plain)
    expected = stock(pipeline, image=references, width=256, height=256, num_inference_steps=2)
    assert np.array_equal(edited, expected)


def test_an_image_alone_is_edited_at_its_own_size(predictor, pipeline, tmp_path):
    image = photo((320, 192), (40, 90, 200), 4)
    image.save(tmp_path / "photo.png")
    (edited,) = predict(predictor, "klein", prompt=SUBJECT, image=tmp_path / "photo.png")
    assert edited.shape == (192, 320, 3)
    expected = stock(pipeline, image=[image], width=320, height=192, num_inference_steps=2)
    assert np.array_equal(edited, expected)


def test_inpainting_conditions_the_masked_area_on_the_reference_images(predictor, tmp_path):
    image, reference = photo((256, 256), (40, 90, 200), 5), photo((256, 256), (230, 40, 30), 6)
    mask = np.zeros((256, 256), np.uint8)
    mask[:, 128:] = 255  # the right half is repainted
    image.save(tmp_path / "photo.png")
    reference.save(tmp_path / "reference.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    inputs = dict(prompt=SUBJECT, image=tmp_path / "photo.png", mask=tmp_path / "mask.png")
    inputs["prompt_strength"] = 1.0
    (painted,) = predict(predictor, "klein", **inputs)
    (referenced,) = predict(predictor, "klein", images=[tmp_path / "reference.png"], **inputs)
    kept = np.asarray(image).astype(int)[:, :128]
    assert np.array_equal(painted[:, :128], kept) and np.array_equal(referenced[:, :128], kept)
    assert not np.array_equal(referenced[:, 128:], painted[:, 128:])


def test_the_inpainting_pipeline_shares_the_base_models_components(predictor):
    base = predictor.engine.base
    assert isinstance(base.inpaint, Flux2KleinInpaintPipeline)
    assert base.inpaint.transformer is base.txt2img.transformer
    assert base.inpaint.config.is_distilled == base.txt2img.config.is_distilled
    assert base.img2img is base.txt2img  # editing is the text-to-image pipeline's


def test_a_request_for_the_variant_the_deployment_does_not_serve_is_refused(predictor):
    with pytest.raises(InvalidRequestError, match="model='base'.*send model='distilled'"):
        predict(predictor, "klein", model="base")


def test_more_reference_images_than_a_request_takes_are_refused(predictor, tmp_path):
    photo((64, 64), (1, 2, 3), 0).save(tmp_path / "p.png")
    with pytest.raises(InvalidRequestError, match="at most 5"):
        predict(predictor, "klein", images=[tmp_path / "p.png"] * 6)


# --- the container -------------------------------------------------------------------------------


# KleinGenerationRequest fields its predictor leaves out: FLUX.1's, and `loras` as both do.
KLEIN_PREDICT_LEFT_OUT = FLUX_PREDICT_LEFT_OUT


def test_its_containers_inputs_are_the_klein_request_and_the_flux_trainers():
    expected = declared_fields(KleinGenerationRequest, leave_out=KLEIN_PREDICT_LEFT_OUT)
    assert_agree(CONTAINERS["klein"].predictor, "Input", expected, {}, container="klein")
    job = {"input_images": None, "base_model": None, "dry_run": False, "resume_from": None}
    expected = declared_fields(FluxTrainingInputs)
    assert_agree(CONTAINERS["klein"].trainer, "TrainingInput", expected, job, container="klein")
    schema = json.loads((ROOT / ".cog" / "schemas" / "klein.json").read_text())
    inputs = schema["components"]["schemas"]["Input"]["properties"]
    assert inputs["images"]["items"] == {"type": "string", "format": "uri"}
    assert schema["components"]["schemas"]["model"]["enum"] == ["distilled", "base"]


def test_a_training_request_over_cogs_server_trains_a_klein_lora(
    model_cache, tiny_klein, tmp_path, file_server_module, monkeypatch
):
    for variable, value in tiny_variables(model_cache).items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("BASE_MODEL", KLEIN.tiny_model)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    photos = file_server_module.add("/photos.zip", ROOT / "examples" / "cat_photos.zip")
    body = {"input": {"input_images": photos, "steps": 4, "lora_rank": 4, "resolution": "64"}}
    with running_server(tmp_path / "train.log", mode="train", container="klein") as url:
        status, response = request_when_free(f"{url}/trainings", body)
    assert status == 200 and response["status"] == "succeeded", response.get("error")
    assert "Base model: tiny-flux2-klein (FLUX.2 [klein])" in response["logs"]
    bundle = tmp_path / BUNDLE_FILE
    bundle.write_bytes(base64.b64decode(response["output"].split(",", 1)[1]))
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
        record = json.load(tar.extractfile(TRAINING_CONFIG_FILE))
    assert {LORA_FILE, LORA_KOHYA_FILE, TRAINING_CONFIG_FILE} <= names
    assert record["family"] == KLEIN.name and record["plan"]["steps"] == 4
