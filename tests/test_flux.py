"""FLUX.1 through the same parts as SDXL, on the embedded tiny FLUX.1: the family and its
detection, flow-matching LoRA training (learning, resume, buckets, layer choice), the bundle's
LoRA in the diffusers and BFL/kohya layouts as stock diffusers reads them, and generation with
Replicate's Flux inputs in every mode."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, T5EncoderModel

from families import FLUX, SDXL, detect_family, family_from_weight_names
from families.flux1 import unpack_latents
from families.flux1.bfl_export import to_bfl_kohya
from formats.bundle import (
    LORA_FILE,
    LORA_KOHYA_FILE,
    MANIFEST_FILE,
    MODEL_CARD_FILE,
    SAMPLES_DIR,
    TRAINING_CONFIG_FILE,
)
from generation.request import ASPECT_RATIOS, FluxGenerationRequest, InvalidRequestError
from generation.switcher import Selection
from predict_flux import Predictor as FluxPredictor
from serving.cli import declared_defaults
from serving.containers import CONTAINERS
from tests.lycoris_files import (
    assert_base,
    assert_changed_as_formula,
    file_tensors,
    loha_layer,
    lokr_layer,
    lora_layer,
    snapshot,
)
from tests.predict_helpers import flux_predictor_on, one_torch_thread, tiny_predictor
from tests.train_helpers import make_dataset, small_config
from tests.trained_bundles import write_kohya_lora, write_lora_bundle
from training.bundle import write_bundle
from training.config import InvalidTrainingConfig
from training.loop import run_training
from weights.embedded.tiny import ensure_tiny_model
from weights.runtime import pick_runtime
from weights.trained_files import WrongFamilyError

TINY_FLUX = FLUX.tiny_model

CPU = pick_runtime("cpu")
SUBJECT = "a photo of TOK, a red square"
FAST = dict(aspect_ratio="custom", width=256, height=256, num_inference_steps=2, seed=3)


@pytest.fixture(scope="module", autouse=True)
def threads():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def tiny_flux(model_cache) -> Path:
    return ensure_tiny_model("base", model_cache, family="flux")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("flux-dataset"), masks=False)


def flux_config(**overrides):
    return small_config(ti_lr=0.0, lora_lr=1e-2, **overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset, tiny_flux):
    """A LoRA trained 40 steps on the red-square set, and its tarball."""
    root = tmp_path_factory.mktemp("flux-run")
    config = flux_config(max_train_steps=40, sample_prompts=SUBJECT, sample_steps=2)
    result = run_training(config, dataset, tiny_flux, root / "run", CPU)
    return result, write_bundle(result, root / "trained_model.tar", TINY_FLUX)


def render(pipeline, prompt=SUBJECT, seed=0) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return pipeline(
        prompt, width=64, height=64, num_inference_steps=4, generator=generator, output_type="np"
    ).images[0]


# --- the family and the tiny model ------------------------------------------------------------


def test_tiny_flux_is_a_flux1_of_the_real_classes_built_deterministically(tiny_flux, tmp_path):
    assert detect_family(tiny_flux) is FLUX
    pipeline = FluxPipeline.from_pretrained(tiny_flux)
    assert isinstance(pipeline.transformer, FluxTransformer2DModel)
    assert pipeline.transformer.config.guidance_embeds  # FLUX.1-dev's distilled guidance
    assert isinstance(pipeline.text_encoder, CLIPTextModel)
    assert isinstance(pipeline.text_encoder_2, T5EncoderModel)
    assert isinstance(pipeline.vae, AutoencoderKL) and pipeline.vae.config.latent_channels == 16
    assert pipeline.vae.config.shift_factor == pytest.approx(0.1159)
    assert isinstance(pipeline.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipeline.scheduler.config.use_dynamic_shifting
    assert pipeline.tokenizer_2.model_max_length == FLUX.max_sequence_length
    ids = pipeline.tokenizer_2("a photo of TOK, a red square!").input_ids
    assert pipeline.tokenizer_2.unk_token_id not in ids  # any ASCII prompt tokenizes
    image = render(pipeline)
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    again = ensure_tiny_model("base", tmp_path, family="flux")
    for part in ("transformer", "text_encoder_2", "vae"):
        (file,) = (tiny_flux / part).glob("*.safetensors")
        assert file.read_bytes() == (again / part / file.name).read_bytes(), part


def test_flux_weights_and_checkpoints_are_told_from_their_names(tmp_path):
    assert family_from_weight_names(["transformer.transformer_blocks.1.attn.to_q.lora_A.weight"])
    assert family_from_weight_names(["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"])
    assert family_from_weight_names(["lora_unet_single_blocks_3_linear1.lora_down.weight"]) is FLUX
    sdxl = "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.lora_A.weight"
    assert family_from_weight_names([sdxl]) is SDXL
    for prefix in ("", "model.diffusion_model."):
        checkpoint = tmp_path / f"bfl{len(prefix)}.safetensors"
        save_file({f"{prefix}double_blocks.0.img_attn.qkv.weight": torch.zeros(2)}, checkpoint)
        assert detect_family(checkpoint) is FLUX


# --- training -----------------------------------------------------------------------------------


def flow_matching_loss(pipeline, dataset: Path) -> float:
    """The flow-matching loss of the pipeline's transformer on the training images, at fixed
    noise and five noise levels: computed here from diffusers' own helpers, independently of
    the trainer's objective."""
    generator = torch.Generator().manual_seed(0)
    embeds, pooled, text_ids = pipeline.encode_prompt(SUBJECT, prompt_2=None)
    losses = []
    for file in sorted(dataset.glob("*.src.png")):
        pixels = torch.from_numpy(np.asarray(Image.open(file), np.float32) / 127.5 - 1)
        with torch.no_grad():
            latent = pipeline.vae.encode(pixels.permute(2, 0, 1)[None]).latent_dist.mean
        config = pipeline.vae.config
        latent = (latent - config.shift_factor) * config.scaling_factor
        _, channels, height, width = latent.shape
        ids = pipeline._prepare_latent_image_ids(1, height // 2, width // 2, "cpu", latent.dtype)
        for sigma in (0.1, 0.3, 0.5, 0.7, 0.9):
            noise = torch.randn(latent.shape, generator=generator)
            noisy = (1 - sigma) * latent + sigma * noise
            with torch.no_grad():
                prediction = pipeline.transformer(
                    hidden_states=pipeline._pack_latents(noisy, 1, channels, height, width),
                    timestep=torch.tensor([sigma]),
                    guidance=torch.tensor([1.0]),
                    pooled_projections=pooled,
                    encoder_hidden_states=embeds,
                    txt_ids=text_ids,
                    img_ids=ids,
                ).sample
            target = pipeline._pack_latents(noise - latent, 1, channels, height, width)
            losses.append(float(((prediction - target) ** 2).mean()))
    return float(np.mean(losses))


def training_latents(pipeline, dataset: Path) -> torch.Tensor:
    """The training images as the transformer sees them: VAE latents, shifted and scaled."""
    pixels = [np.asarray(Image.open(f), np.float32) for f in sorted(dataset.glob("*.src.png"))]
    batch = torch.from_numpy(np.stack(pixels) / 127.5 - 1).permute(0, 3, 1, 2)
    with torch.no_grad():
        latents = pipeline.vae.encode(batch).latent_dist.mean
    return (latents - pipeline.vae.config.shift_factor) * pipeline.vae.config.scaling_factor


def distance_to_training_set(pipeline, targets: torch.Tensor) -> float:
    """Mean over four seeds of the generated latents' distance to the nearest training image
    (in latent space: the tiny VAE is random, its pixels mean nothing)."""
    distances = []
    for seed in range(4):
        packed = pipeline(
            SUBJECT,
            width=64,
            height=64,
            num_inference_steps=8,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
        ).images
        latents = unpack_latents(packed, *targets.shape[-2:])
        distances.append(float(((latents - targets) ** 2).mean(dim=(1, 2, 3)).min()))
    return float(np.mean(distances))


def test_a_flux_lora_learns_the_training_images(trained, dataset, tiny_flux):
    """Stock diffusers with the trained LoRA: the flow-matching loss on the training images
    falls, and generated latents move toward the training images'."""
    result, _ = trained
    pipeline = FluxPipeline.from_pretrained(tiny_flux)
    pipeline.set_progress_bar_config(disable=True)
    targets = training_latents(pipeline, dataset)
    base_loss = flow_matching_loss(pipeline, dataset)
    base_distance = distance_to_training_set(pipeline, targets)
    pipeline.load_lora_weights(result.weights_dir, weight_name=LORA_FILE)
    trained_loss = flow_matching_loss(pipeline, dataset)
    assert trained_loss < 0.8 * base_loss, (base_loss, trained_loss)
    trained_distance = distance_to_training_set(pipeline, targets)
    assert trained_distance < 0.9 * base_distance, (base_distance, trained_distance)
    assert sorted((result.work_dir / SAMPLES_DIR).glob("*.png")), "no sample was rendered"


def test_every_image_trains_at_each_bucket_resolution(tiny_flux, tmp_path):
    dataset = make_dataset(tmp_path / "data", count=2, masks=False, size=128)
    config = flux_config(resolution=128, bucket_resolutions="64", max_train_steps=2)
    result = run_training(config, dataset, tiny_flux, tmp_path / "run", CPU)
    assert result.summary["sizes"] == {"64x64": 2, "128x128": 2}


def test_layers_to_optimize_choose_what_the_lora_trains(dataset, tiny_flux, tmp_path):
    regex = r"transformer.single_transformer_blocks.(0|1).proj_out"
    config = flux_config(max_train_steps=1, lora_layers_regex=regex)
    result = run_training(config, dataset, tiny_flux, tmp_path / "run", CPU)
    modules = {k.split(".lora_")[0] for k in load_file(str(result.weights_dir / LORA_FILE))}
    assert modules == {f"transformer.single_transformer_blocks.{i}.proj_out" for i in (0, 1)}
    with pytest.raises(InvalidTrainingConfig, match="matches no linear or convolution layer"):
        run_training(
            flux_config(max_train_steps=1, lora_layers_regex="no_such_layer"),
            dataset,
            tiny_flux,
            tmp_path / "none",
            CPU,
        )


def test_an_int8_base_trains_the_same_lora_layout_and_learns(trained, dataset, tiny_flux, tmp_path):
    """base_quantization=int8 (what fits FLUX.1-dev on a 24 GB card): the transformer's linear
    weights are int8 while the LoRA trains; the LoRA has the full-precision run's layout, its
    loss falls as far, and it loads in stock diffusers."""
    full, _ = trained
    config = flux_config(max_train_steps=40, base_quantization="int8")
    result = run_training(config, dataset, tiny_flux, tmp_path / "run", CPU)
    int8_lora = load_file(str(result.weights_dir / LORA_FILE))
    full_lora = load_file(str(full.weights_dir / LORA_FILE))
    assert {k: v.shape for k, v in int8_lora.items()} == {k: v.shape for k, v in full_lora.items()}
    pipeline = FluxPipeline.from_pretrained(tiny_flux)
    base_loss = flow_matching_loss(pipeline, dataset)
    pipeline.load_lora_weights(result.weights_dir, weight_name=LORA_FILE)
    assert flow_matching_loss(pipeline, dataset) < 0.8 * base_loss


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ti_lr": 3e-4}, "trains no new tokens: set ti_lr=0"),
        ({"ti_lr": 0.0, "min_snr_gamma": 5.0}, "trains by flow matching: set min_snr_gamma=0"),
        ({"ti_lr": 0.0, "is_lora": False, "unet_learning_rate": 1e-5}, "LoRA on its transformer"),
        ({"ti_lr": 0.0, "lora_method": "dora"}, "FLUX.1 trains lora here: set lora_method='lora'"),
    ],
)
def test_settings_flux_cannot_train_are_refused_before_training(
    settings, message, dataset, tiny_flux, tmp_path
):
    config = small_config(**settings)
    with pytest.raises(InvalidTrainingConfig, match=message):
        run_training(config, dataset, tiny_flux, tmp_path / "run", CPU)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# --- the bundle ---------------------------------------------------------------------------------


def test_the_bundle_records_flux_and_its_kohya_file_has_bfl_names(trained):
    result, bundle = trained
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
        record = json.load(tar.extractfile(TRAINING_CONFIG_FILE))
    assert {LORA_FILE, LORA_KOHYA_FILE} <= names
    assert record["family"] == "flux"
    kohya = load_file(str(result.weights_dir / LORA_KOHYA_FILE))
    modules = {key.rsplit(".", 2)[0] if "lora_" in key else key for key in kohya}
    modules = {m.removesuffix(".alpha").split(".lora_")[0] for m in modules}
    expected = {
        f"lora_unet_double_blocks_{i}_{part}"
        for i in (0, 1)
        for part in (
            "img_attn_qkv",
            "txt_attn_qkv",
            "img_attn_proj",
            "txt_attn_proj",
            "img_mlp_0",
            "img_mlp_2",
            "txt_mlp_0",
            "txt_mlp_2",
        )
    } | {f"lora_unet_single_blocks_{i}_{part}" for i in (0, 1) for part in ("linear1", "linear2")}
    assert modules == expected
    # BFL's fused widths: q, k, v (3 x 32) and, in a single block, the MLP input too (4 x 32).
    assert kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape[0] == 96
    assert kohya["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape[0] == 96 + 128


def real_size_lora(rank: int = 4, alpha: float = 8.0, single_mlp: bool = True) -> dict:
    """A diffusers-layout LoRA of FLUX.1's real widths on one double and one single block."""
    hidden, mlp = 3072, 12288
    shapes = {
        **{f"transformer_blocks.0.attn.{n}": (hidden, hidden) for n in ("to_q", "to_k", "to_v")},
        **{f"transformer_blocks.0.attn.add_{n}_proj": (hidden, hidden) for n in "qkv"},
        "transformer_blocks.0.attn.to_out.0": (hidden, hidden),
        "transformer_blocks.0.ff.net.0.proj": (mlp, hidden),
        "transformer_blocks.0.ff_context.net.2": (hidden, mlp),
        **{f"single_transformer_blocks.0.attn.{n}": (hidden, hidden) for n in ("to_q", "to_v")},
        "single_transformer_blocks.0.proj_out": (hidden, hidden + mlp),
    }
    if single_mlp:
        shapes["single_transformer_blocks.0.proj_mlp"] = (mlp, hidden)
    generator = torch.Generator().manual_seed(0)
    lora = {}
    for module, (out_features, in_features) in shapes.items():
        lora[f"transformer.{module}.lora_A.weight"] = torch.randn(
            rank, in_features, generator=generator
        )
        lora[f"transformer.{module}.lora_B.weight"] = torch.randn(
            out_features, rank, generator=generator
        )
    widths = {f"transformer.{m}": s[0] for m, s in shapes.items()}
    widths.update(
        {
            "transformer.single_transformer_blocks.0.attn.to_k": hidden,
            "transformer.single_transformer_blocks.0.proj_mlp": mlp,
        }
    )
    return {"lora": lora, "alpha": alpha, "rank": rank, "widths": widths}


@pytest.mark.parametrize("single_mlp", [True, False], ids=["all-parts", "untrained-parts"])
def test_the_bfl_file_reads_back_in_stock_diffusers_as_the_same_lora(single_mlp):
    """At FLUX.1's real widths (diffusers' reader knows only those for `linear1`): every
    module's update B·A·alpha/rank read back from the kohya file equals the original, and
    fused parts that were not trained read back as no update."""
    made = real_size_lora(single_mlp=single_mlp)
    kohya = to_bfl_kohya(made["lora"], made["alpha"], made["widths"])
    assert not any(key.startswith("transformer.") for key in kohya)
    read = FluxPipeline.lora_state_dict(dict(kohya))
    scale = made["alpha"] / made["rank"]
    for key in made["lora"]:
        if ".lora_A." not in key:
            continue
        module = key.removesuffix(".lora_A.weight")
        original = made["lora"][f"{module}.lora_B.weight"] @ made["lora"][key] * scale
        back = read[f"{module}.lora_B.weight"] @ read[f"{module}.lora_A.weight"]
        torch.testing.assert_close(back, original, rtol=1e-4, atol=1e-3)
    for untrained in ("single_transformer_blocks.0.attn.to_k",) + (
        () if single_mlp else ("single_transformer_blocks.0.proj_mlp",)
    ):
        down = read[f"transformer.{untrained}.lora_A.weight"]
        up = read[f"transformer.{untrained}.lora_B.weight"]
        assert (up @ down).abs().max() == 0


# --- generation ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flux_predictor(model_cache, tiny_flux) -> FluxPredictor:
    return flux_predictor_on(model_cache, TINY_FLUX)


def flux_predict(predictor, **inputs) -> list[np.ndarray]:
    defaults = declared_defaults(CONTAINERS["flux"].predictor)
    paths = predictor.predict(**{**defaults, **FAST, "output_format": "png", **inputs})
    return [np.asarray(Image.open(path)).astype(int) for path in paths]


def test_replicates_flux_sizes_aspect_ratios_and_custom_rounded_to_16(flux_predictor):
    assert ASPECT_RATIOS["16:9"] == (1344, 768) and ASPECT_RATIOS["9:21"] == (640, 1536)
    request = FluxGenerationRequest(aspect_ratio="3:2", width=300)
    sized, notes = request.sized()
    assert (sized.width, sized.height) == (
        1216,
        832,
    ) and "only with aspect_ratio='custom'" in notes[0]
    (image,) = flux_predict(flux_predictor, width=300, height=270)
    assert image.shape[:2] == (256, 288)  # (height, width), each rounded down to 16
    with pytest.raises(InvalidRequestError, match="needs width and height"):
        flux_predict(flux_predictor, width=None)
    with pytest.raises(InvalidRequestError, match="serves FLUX.1-dev"):
        flux_predict(flux_predictor, model="schnell")


def test_flux_img2img_keeps_the_image_size_and_inpainting_keeps_black_pixels(
    flux_predictor, tmp_path
):
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (100, 136, 3), np.uint8)).save(photo)
    mask = np.zeros((100, 136), np.uint8)
    mask[:, 68:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    (changed,) = flux_predict(flux_predictor, image=photo, prompt_strength=0.9)
    assert changed.shape[:2] == (96, 128)  # the image's own size, rounded down to 16
    (painted,) = flux_predict(flux_predictor, image=photo, mask=tmp_path / "mask.png")
    kept = np.asarray(Image.open(photo).resize((128, 96), Image.Resampling.LANCZOS)).astype(int)
    assert np.array_equal(painted[:, :60], kept[:, :60])
    assert np.abs(painted[:, 72:] - kept[:, 72:]).mean() > 1


def test_trained_flux_weights_apply_per_request_and_leave_nothing(flux_predictor, trained):
    _, bundle = trained
    base = flux_predict(flux_predictor, prompt=SUBJECT)
    with_lora = flux_predict(flux_predictor, prompt=SUBJECT, replicate_weights=bundle)
    assert np.abs(with_lora[0] - base[0]).mean() > 1
    negative = flux_predict(
        flux_predictor, prompt=SUBJECT, replicate_weights=bundle, lora_scale=-1.0
    )
    assert np.abs(negative[0] - with_lora[0]).mean() > 1
    stacked = flux_predict(flux_predictor, prompt=SUBJECT, extra_lora=bundle, extra_lora_scale=1.0)
    assert np.array_equal(stacked[0], with_lora[0])  # one LoRA, by either input
    assert np.array_equal(flux_predict(flux_predictor, prompt=SUBJECT)[0], base[0])


def test_a_flux_prompt_without_the_trigger_word_is_told_so(flux_predictor, trained, capsys):
    _, bundle = trained
    flux_predict(flux_predictor, prompt="a red square", replicate_weights=bundle)
    assert "The prompt does not contain TOK" in capsys.readouterr().out
    flux_predict(flux_predictor, prompt=SUBJECT, replicate_weights=bundle)
    assert "does not contain" not in capsys.readouterr().out


def test_flux_weights_and_sdxl_weights_are_refused_by_the_other_container(
    flux_predictor, trained, model_cache, tiny_models, tmp_path
):
    _, bundle = trained
    sdxl = tiny_predictor(model_cache)
    inputs = {**declared_defaults(), "width": 64, "height": 64, "num_inference_steps": 1}
    with pytest.raises(WrongFamilyError, match=r"trained for FLUX\.1 \(flux\).*SDXL") as refused:
        sdxl.predict(**{**inputs, "replicate_weights": bundle})
    assert "--container flux" in str(refused.value) and "BASE_MODEL" not in str(refused.value)
    sdxl_bundle = write_lora_bundle(tiny_models["base"], tmp_path / "sdxl", seed=1)
    base = flux_predict(flux_predictor)
    for name in ("replicate_weights", "extra_lora"):
        with pytest.raises(WrongFamilyError, match=r"trained for SDXL.*FLUX\.1 \(flux\) base"):
            flux_predict(flux_predictor, **{name: sdxl_bundle})
    assert np.array_equal(flux_predict(flux_predictor)[0], base[0])


def test_a_pretrained_lora_url_is_packaged_without_training_and_serves_that_lora(
    flux_predictor, trained, file_server, tiny_env, tiny_models, monkeypatch, tmp_path, capsys
):
    """skip_training_and_use_pretrained_hf_lora_url: the LoRA at the URL (fetched through the
    model store) becomes the tarball, with no photos and no training; the predictor then
    applies exactly that LoRA. Another family's LoRA is refused."""
    from tests.test_train_entry import train_with

    result, trained_bundle = trained
    lora = (result.weights_dir / LORA_FILE).read_bytes()
    url = file_server.add("/someone/flux-lora/resolve/main/lora.safetensors", lora)
    monkeypatch.setenv("BASE_MODEL", TINY_FLUX)
    trainer = CONTAINERS["flux"].trainer
    packaged = train_with(
        trainer, input_images="", skip_training_and_use_pretrained_hf_lora_url=url
    )
    assert "Training:" not in capsys.readouterr().out  # nothing trained
    with tarfile.open(packaged) as tar:
        names = [LORA_FILE, MODEL_CARD_FILE, TRAINING_CONFIG_FILE, MANIFEST_FILE]
        assert sorted(tar.getnames()) == sorted(names)
        manifest = json.load(tar.extractfile(MANIFEST_FILE))
        assert tar.extractfile(LORA_FILE).read() == lora
        record = json.load(tar.extractfile(TRAINING_CONFIG_FILE))
    assert record["family"] == "flux" and record["source"] == url
    assert manifest["family"] == "flux" and manifest["trigger_word"] == "TOK"
    assert manifest["files"] == {"lora": LORA_FILE, "model_card": MODEL_CARD_FILE,
                                 "training_record": TRAINING_CONFIG_FILE}  # fmt: skip
    copy = tmp_path / "packaged.tar"  # the next train() call releases the handed-over tarball
    copy.write_bytes(Path(packaged).read_bytes())

    base = flux_predict(flux_predictor, prompt=SUBJECT)
    served = flux_predict(flux_predictor, prompt=SUBJECT, replicate_weights=copy)
    assert np.array_equal(served[0], flux_predict(flux_predictor, prompt=SUBJECT,
                                                  replicate_weights=trained_bundle)[0])  # fmt: skip
    assert np.abs(served[0] - base[0]).mean() > 1

    sdxl = file_server.add("/sdxl-lora.safetensors", write_kohya_lora(tiny_models["base"],
                           tmp_path / "sdxl.safetensors", seed=1).read_bytes())  # fmt: skip
    with pytest.raises(ValueError, match=r"is a LoRA for SDXL, not FLUX\.1"):
        train_with(trainer, input_images="", skip_training_and_use_pretrained_hf_lora_url=sdxl)


@pytest.mark.parametrize("shorthand", ["someone/flux-style", "civitai.com/models/123"])
def test_replicates_extra_lora_shorthands_are_refused_naming_the_input(flux_predictor, shorthand):
    """Replicate's Flux models take `owner/model` and `civitai.com/...` as extra_lora; here a
    LoRA is named by its URL, and a bare name is refused (it could be a path on the server)."""
    with pytest.raises(InvalidRequestError, match=f"extra_lora: .{shorthand}. is not an http"):
        flux_predict(flux_predictor, extra_lora=shorthand)


def test_lycoris_files_in_bfl_names_change_the_fused_layers_rows(flux_predictor, tmp_path):
    """BFL's fused layers (`img_attn_qkv` = to_q, to_k, to_v; `linear1` = to_q, to_k, to_v,
    proj_mlp) change as one weight, their rows split back; a DoRA over input columns
    normalises the whole fused weight."""
    g = torch.Generator().manual_seed(6)
    single = tuple(
        f"single_transformer_blocks.0.{m}"
        for m in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
    )
    layers = [
        lokr_layer(
            "lora_unet_double_blocks_0_img_attn_qkv",
            "transformer",
            tuple(f"transformer_blocks.0.attn.to_{p}" for p in "qkv"),
            (96, 32),
            g,
            w1="whole",
            w2="ab",
            alpha=2.0,
        ),
        lora_layer(
            "lora_unet_single_blocks_0_linear1",
            "transformer",
            single,
            (224, 32),
            g,
            alpha=4.0,
            dora="in",
        ),
        loha_layer(
            "lora_unet_single_blocks_1_linear2",
            "transformer",
            ("single_transformer_blocks.1.proj_out",),
            (32, 160),
            g,
            alpha=2.0,
        ),
        lokr_layer(
            "lycoris_transformer_blocks_1_attn_add_k_proj",
            "transformer",
            ("transformer_blocks.1.attn.add_k_proj",),
            (32, 32),
            g,
            w1="ab",
            w2="ab",
        ),
    ]
    save_file(file_tensors(layers), tmp_path / "flux.safetensors")
    engine = flux_predictor.engine
    models = engine.switcher.components
    before = snapshot(models)
    lora = engine.weights_cache.get(tmp_path / "flux.safetensors").lora
    engine.switcher.activate(Selection(stacked=((lora, 0.9),)))
    assert_changed_as_formula(models, [(x, 0.9) for x in layers], before)
    engine.switcher.activate(Selection())
    assert_base(models, before)
