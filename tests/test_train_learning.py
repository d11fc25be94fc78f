"""The trainer learns: LoRA + pivotal tuning, full fine-tune and pure textual inversion, on
the tiny SDXL and the tiny SD 1.5 (tests taking `base` run for both families) and a synthetic
subject; and what it writes loads in stock diffusers."""

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image
from safetensors.torch import load_file

from families import FAMILIES, SD15, SDXL, ModelFamily
from formats.bundle import (
    BUNDLE_FILE,
    EMBEDDINGS_FILE,
    EMBEDDINGS_PTI_FILE,
    LORA_FILE,
    LORA_KOHYA_FILE,
    LOSS_PLOT_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    PREVIEW_FILE,
    SPECIAL_PARAMS_FILE,
    TRAINING_CONFIG_FILE,
    UNET_FILE,
)
from formats.tokens import TokenEmbeddingsHandler
from tests.train_helpers import make_dataset, one_thread, small_config  # noqa: F401 (autouse)
from training.bundle import write_bundle, write_dry_run_report
from training.dataset import load_pixels
from training.job import PreparedImages
from training.loop import STATE_DIR, TrainingDivergedError, run_training
from training.schedule import seeded
from weights.archive import unpack_archive
from weights.runtime import pick_runtime
from weights.trained_files import inspect_weights

CPU = pick_runtime("cpu")
TRIGGER_PROMPT = "a photo of <s0><s1>"


@dataclass(frozen=True)
class Base:
    """A tiny base model and its family, with stock diffusers pipelines built on it."""

    folder: Path
    family: ModelFamily

    def pipeline(self, weights=None, unet_file=None):
        """The family's stock pipeline, with a bundle's LoRA and tokens loaded the documented
        way (load_lora_weights, Replicate's TokenEmbeddingsHandler recipe)."""
        pipe = getattr(diffusers, self.family.txt2img_pipeline).from_pretrained(self.folder)
        pipe.set_progress_bar_config(disable=True)
        if weights is not None and (weights / LORA_FILE).is_file():
            pipe.load_lora_weights(weights, weight_name=LORA_FILE)
        if weights is not None and (weights / EMBEDDINGS_PTI_FILE).is_file():
            handler = TokenEmbeddingsHandler(self.encoders(pipe), self.tokenizers(pipe))
            handler.load_embeddings(weights / EMBEDDINGS_PTI_FILE)
        if unet_file is not None:
            pipe.unet.load_state_dict(load_file(str(unet_file)))
        return pipe

    def encoders(self, pipe) -> list:
        return [getattr(pipe, name) for name in self.family.text_encoder_names]

    def tokenizers(self, pipe) -> list:
        return [getattr(pipe, name) for name in self.family.tokenizer_names]


# The UNet families; FLUX.1's learning, resume and formats: tests/test_flux.py.
@pytest.fixture(scope="module", params=[SDXL.name, SD15.name])
def base(request, tiny_models, tiny_sd15_model) -> Base:
    folder = tiny_models["base"] if request.param == SDXL.name else tiny_sd15_model
    return Base(folder, FAMILIES[request.param])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("dataset"))


def train(dataset, base, work, **overrides):
    return run_training(small_config(**overrides), dataset, base, work, CPU)


@pytest.fixture(scope="module")
def lora_run(dataset, base, tmp_path_factory):
    return train(
        dataset,
        base.folder,
        tmp_path_factory.mktemp("lora-run"),
        max_train_steps=40,
        lora_lr=3e-2,
        ti_lr=5e-2,
        lora_rank=8,
        min_snr_gamma=5.0,
        noise_offset=0.02,
        checkpointing_steps=20,
        sample_prompts=("a photo of TOK",),
        sample_steps=2,
    )


def generate(pipe, prompt=TRIGGER_PROMPT, seed=0, output_type="np", steps=6):
    return pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=1.0,
        output_type=output_type,
        generator=torch.Generator().manual_seed(seed),
    ).images


def differs(a, b) -> bool:
    """More than 1% apart on average, relative to the values' own scale."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return (a - b).abs().mean().item() > 0.01 * b.abs().mean().item()


def losses(result):
    return [json.loads(line)["loss"] for line in result.metrics_file.read_text().splitlines()]


def training_latents(dataset, pipe):
    pixels = torch.stack([load_pixels(p) for p in sorted(dataset.glob("*.src.png"))])
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean
    return latents * pipe.vae.config.scaling_factor


def denoising_loss(pipe, latents, prompt, count=32):
    """The training objective on fixed draws (noise, timesteps), so two models compare
    without the noise of the per-step loss."""
    generator = torch.Generator().manual_seed(123)
    latents = latents[torch.arange(count) % len(latents)]
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (count,), generator=generator)
    noisy = DDPMScheduler.from_config(pipe.scheduler.config).add_noise(latents, noise, timesteps)
    embeds, added = pipeline_conditioning(pipe, prompt, count)
    with torch.no_grad():
        prediction = pipe.unet(noisy, timesteps, embeds, added_cond_kwargs=added).sample
    return (prediction - noise).pow(2).mean().item()


def pipeline_conditioning(pipe, prompt, count):
    """The UNet's text conditioning as the stock pipeline computes it (SDXL: plus the pooled
    embedding and the 64x64 micro-conditioning)."""
    if isinstance(pipe, diffusers.StableDiffusionXLPipeline):
        embeds, _, pooled, _ = pipe.encode_prompt(
            [prompt] * count, do_classifier_free_guidance=False
        )
        time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]] * count, dtype=torch.float32)
        return embeds, {"text_embeds": pooled, "time_ids": time_ids}
    embeds, _ = pipe.encode_prompt([prompt] * count, "cpu", 1, do_classifier_free_guidance=False)
    return embeds, None


def distance_to_training(pipe, target, prompt):
    sampled = torch.cat([generate(pipe, prompt, seed, "latent", 10) for seed in range(4)])
    return (sampled - target.mean(0, keepdim=True)).pow(2).mean().item()


def test_lora_with_pivotal_tuning_learns_the_subject(lora_run, base, dataset):
    assert lora_run.family is base.family
    tuned = base.pipeline(lora_run.weights_dir)
    base_pipe = base.pipeline()
    target = training_latents(dataset, base_pipe)

    # (a) the loss falls
    assert len(losses(lora_run)) == 40
    before = denoising_loss(base_pipe, target, "a photo of TOK, a red square")
    assert denoising_loss(tuned, target, f"{TRIGGER_PROMPT}, a red square") < 0.95 * before

    # (b) the new token rows moved from their initialisation; every other row is untouched
    state = load_file(
        str(lora_run.checkpoints[0] / STATE_DIR / "parameters.safetensors")
    )  # the whole embedding tables at step 20
    fresh = base.pipeline()
    handler = TokenEmbeddingsHandler(base.encoders(fresh), base.tokenizers(fresh))
    handler.initialize_new_tokens(2, torch.Generator().manual_seed(0))  # the run's init
    initial = handler.token_vectors()
    trained = load_file(str(lora_run.weights_dir / EMBEDDINGS_PTI_FILE))
    assert sorted(trained) == sorted(base.family.pti_keys)
    names = base.family.text_encoder_names
    for index, (name, encoder) in enumerate(zip(names, base.encoders(base_pipe), strict=True)):
        (table,) = [
            v for k, v in state.items() if k.startswith(f"{name}.") and "token_embedding" in k
        ]
        original = encoder.get_input_embeddings().weight
        assert torch.equal(table[: original.shape[0]], original)
        moved = trained[f"text_encoders_{index}"] - initial[index]
        assert moved.abs().max() > 1e-3

    # (c) the trigger now draws something else than the base model with the same seed
    assert differs(generate(tuned), generate(base_pipe))

    # (d) in latent space, samples with the trigger move toward the training images
    assert distance_to_training(tuned, target, TRIGGER_PROMPT) < 0.95 * distance_to_training(
        base_pipe, target, "a photo of TOK"
    )


def test_full_fine_tune_updates_the_unet_in_fp32(dataset, base, tmp_path):
    result = train(
        dataset,
        base.folder,
        tmp_path,
        is_lora=False,
        unet_learning_rate=2e-4,
        ti_lr=0,
        max_train_steps=20,
    )
    files = sorted(p.name for p in result.weights_dir.iterdir())
    assert files == [SPECIAL_PARAMS_FILE, UNET_FILE]
    base_pipe = base.pipeline()
    tuned_state = load_file(str(result.weights_dir / UNET_FILE))
    changed = [
        name
        for name, tensor in base_pipe.unet.state_dict().items()
        if not torch.equal(tensor, tuned_state[name])
    ]
    assert len(changed) > 0.9 * len(tuned_state)  # really the UNet, not a no-op
    assert all(t.dtype == torch.float32 for t in tuned_state.values())
    tuned = base.pipeline(unet_file=result.weights_dir / UNET_FILE)
    prompt = "a photo of TOK"
    target = training_latents(dataset, base_pipe)
    before = denoising_loss(base_pipe, target, prompt)
    assert denoising_loss(tuned, target, prompt) < 0.95 * before
    assert differs(generate(tuned, prompt), generate(base_pipe, prompt))


def test_pure_textual_inversion_trains_only_the_tokens(dataset, base, tmp_path):
    result = train(dataset, base.folder, tmp_path, lora_lr=0, ti_lr=3e-2,
                   max_train_steps=20)  # fmt: skip
    assert result.plan.pivot_step == 20  # tokens train to the end
    files = {p.name for p in result.weights_dir.iterdir()}
    assert LORA_FILE not in files and UNET_FILE not in files
    assert {EMBEDDINGS_PTI_FILE, EMBEDDINGS_FILE, SPECIAL_PARAMS_FILE} <= files
    base_pipe = base.pipeline()
    encoders = base.encoders(base_pipe)
    assert result.summary["trainable_parameters"] == sum(
        e.get_input_embeddings().weight.numel() + 2 * e.config.hidden_size  # 2 new rows
        for e in encoders
    )
    tuned = base.pipeline(result.weights_dir)
    assert differs(generate(tuned, output_type="latent"), generate(base_pipe, output_type="latent"))
    target = training_latents(dataset, base_pipe)
    before = denoising_loss(base_pipe, target, "a photo of TOK, a red square")
    assert denoising_loss(tuned, target, f"{TRIGGER_PROMPT}, a red square") < before
    described = inspect_weights(result.weights_dir)
    assert described.embeddings_pti is not None and described.family is base.family


def test_same_seed_same_tensors_and_seed_zero_is_a_seed(dataset, tiny_models, tmp_path):
    runs = [
        train(
            dataset,
            tiny_models["base"],
            tmp_path / name,
            seed=seed,
            max_train_steps=3,
            gradient_accumulation_steps=2,
            flip_augmentation=True,
        )  # fmt: skip
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    ]
    first, second, other = (load_file(str(r.weights_dir / LORA_FILE)) for r in runs)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert losses(runs[0]) == losses(runs[1])
    assert len(losses(runs[0])) == 3  # exactly max_train_steps optimizer steps


def test_nan_loss_stops_the_run_without_writing_weights(dataset, tiny_models, tmp_path):
    # The largest learning rate allowed, unclipped: Adam moves each LoRA weight by about 10 a
    # step and the loss overflows within a few steps (here at step 9); 50 leaves margin for
    # other machines' arithmetic, and the run stops at the first NaN anyway.
    with pytest.raises(TrainingDivergedError, match="training diverged"):
        train(dataset, tiny_models["base"], tmp_path, lora_lr=10, ti_lr=0, max_grad_norm=0,
              max_train_steps=50)  # fmt: skip
    assert not (tmp_path / "weights").exists()


def test_lora_formats_load_in_stock_diffusers_and_agree(dataset, base, tmp_path):
    result = train(
        dataset,
        base.folder,
        tmp_path,
        lora_lr=5e-3,
        lora_rank=4,
        lora_alpha=2.0,  # scale 0.5: alpha must survive in both layouts
        train_text_encoder=True,
        text_encoder_lr=5e-3,
        max_train_steps=4,
    )
    weights = result.weights_dir
    kohya = load_file(str(weights / LORA_KOHYA_FILE))
    family = base.family  # SDXL: lora_unet_, lora_te1_, lora_te2_; SD 1.5: lora_unet_, lora_te_
    prefixes = {family.kohya_unet_prefix, *family.kohya_text_encoder_prefixes}
    assert {k.split("_")[0] + "_" + k.split("_")[1] for k in kohya} == prefixes
    assert all(v.item() == 2.0 for k, v in kohya.items() if k.endswith(".alpha"))
    # Text-encoder modules under the names A1111, ComfyUI and older diffusers know.
    first_te = f"{family.kohya_text_encoder_prefixes[0]}_text_model_encoder_layers_0_self_attn_"
    assert f"{first_te}q_proj.lora_down.weight" in kohya
    peft_keys = load_file(str(weights / LORA_FILE))
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in peft_keys

    # lora.safetensors + Replicate's recipe for the tokens: the reference
    reference = generate(base.pipeline(weights))
    assert differs(reference, generate(base.pipeline()))
    from_kohya = base.pipeline()
    from_kohya.load_lora_weights(weights, weight_name=LORA_KOHYA_FILE)
    TokenEmbeddingsHandler(base.encoders(from_kohya), base.tokenizers(from_kohya)).load_embeddings(
        weights / EMBEDDINGS_PTI_FILE
    )
    np.testing.assert_allclose(generate(from_kohya), reference, atol=1e-4)

    # embeddings.safetensors with diffusers' textual inversion
    from_ti = base.pipeline()
    from_ti.load_lora_weights(weights, weight_name=LORA_FILE)
    if len(family.text_encoder_dims) == 1:
        # The A1111 way: the file under a name of one's choosing, that name in the prompt.
        from_ti.load_textual_inversion(weights / EMBEDDINGS_FILE, token="mysubject")
        prompt = "a photo of mysubject"
    else:  # one text encoder at a time
        vectors = load_file(str(weights / EMBEDDINGS_FILE))
        pairs = zip(base.encoders(from_ti), base.tokenizers(from_ti), strict=True)
        for key, (encoder, tokenizer) in zip(family.embedding_keys, pairs, strict=True):
            from_ti.load_textual_inversion(
                vectors[key], token=["<s0>", "<s1>"], text_encoder=encoder, tokenizer=tokenizer
            )
        prompt = TRIGGER_PROMPT
    np.testing.assert_allclose(generate(from_ti, prompt), reference, atol=1e-5)


def test_bundle_holds_every_promised_file(lora_run, base, tmp_path):
    preview = tmp_path / "preview.png"
    preview.write_bytes((lora_run.work_dir / "samples").glob("*.png").__next__().read_bytes())
    bundle = write_bundle(lora_run, tmp_path / BUNDLE_FILE, str(base.folder), preview=preview)
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
        record = json.load(tar.extractfile(TRAINING_CONFIG_FILE))
        card = tar.extractfile(MODEL_CARD_FILE).read().decode()
    expected = {
        LORA_FILE,
        LORA_KOHYA_FILE,
        EMBEDDINGS_PTI_FILE,
        EMBEDDINGS_FILE,
        SPECIAL_PARAMS_FILE,
        TRAINING_CONFIG_FILE,
        MODEL_CARD_FILE,
        PREVIEW_FILE,
        LOSS_PLOT_FILE,
        METRICS_FILE,
        f"checkpoints/checkpoint-000020/{LORA_FILE}",
        "samples/step-000040-0.png",
    }
    assert expected <= names
    # The newest checkpoint keeps what resume_from needs: the trained parameters, the optimizer.
    state = {name for name in names if f"/{STATE_DIR}/" in name}
    assert state and all(name.startswith("checkpoints/checkpoint-000020/") for name in state)
    assert record["plan"]["steps"] == 40 and record["token_map"] == {"TOK": "<s0><s1>"}
    assert "diffusers" in record["libraries"]
    assert "<s0><s1>" in card and "load_lora_weights" in card
    assert not list(tmp_path.glob("*.partial"))
    # The family is recorded, and the model card's snippet is the family's.
    assert record["family"] == base.family.name
    assert f"{base.family.txt2img_pipeline}.from_pretrained" in card
    assert all(f"pipe.{name}" in card for name in base.family.text_encoder_names)
    unpack_archive(bundle, tmp_path / "unpacked")
    assert inspect_weights(tmp_path / "unpacked").family is base.family


def test_dry_run_times_a_few_steps_and_reports_the_plan(dataset, tiny_models, tmp_path):
    config = small_config(max_train_steps=500, train_batch_size=2, num_repeats=2)
    timing = run_training(config, dataset, tiny_models["base"], tmp_path / "run", CPU,
                          timing_steps=3)  # fmt: skip
    assert len(timing.step_seconds) == 3 and timing.seconds_per_step > 0
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    prepared = PreparedImages(dataset, skipped=(("notes.docx", "not an image"),))
    report = write_dry_run_report(timing, prepared, tmp_path / "dry_run.tar", 1.0)
    with tarfile.open(report) as tar:
        plan = json.load(tar.extractfile("plan.json"))
    assert plan["steps"] == 500 and plan["epochs"] == 125  # 4 images x 2 repeats / batch 2
    assert plan["skipped"] == [{"file": "notes.docx", "reason": "not an image"}]
    assert plan["images"][0]["caption"] == "a photo of TOK, a red square"
    assert plan["estimated_training_seconds"] == pytest.approx(500 * timing.seconds_per_step, 0.01)


def test_prior_preservation_trains_on_the_base_models_own_class_images(
    dataset, tiny_models, tmp_path
):
    base = Base(tiny_models["base"], SDXL)
    settings = dict(max_train_steps=12, lora_lr=3e-2, ti_lr=0, lora_rank=8)
    prior = dict(class_prompt="a photo of a cat\na photo of a dog", num_class_images=4)
    plain = train(dataset, base.folder, tmp_path / "plain", **settings)
    weightless = train(dataset, base.folder, tmp_path / "w0", **settings, **prior,
                       prior_loss_weight=0.0)  # fmt: skip
    kept = train(dataset, base.folder, tmp_path / "kept", **settings, **prior)

    # The base model drew the class images before anything trained, the prompts in turn.
    class_images = sorted((tmp_path / "kept" / "class_images").glob("*.png"))
    assert len(class_images) == 4 and kept.summary["class_images"] == 4
    assert "class images" in kept.phase_seconds and "class_images" not in plain.summary
    config = kept.config
    drawn = base.pipeline()(
        "a photo of a dog",
        height=64,
        width=64,
        num_inference_steps=config.sample_steps,
        generator=torch.Generator().manual_seed(seeded(config.seed, 1, 0xC1A55)),
        output_type="np",
    ).images[0]
    assert np.abs(np.asarray(Image.open(class_images[1]), float) / 255 - drawn).max() < 2 / 255

    # Their loss is part of what trains: weighted 0 it changes nothing, weighted 1 it does.
    def lora(result):
        return load_file(str(result.weights_dir / LORA_FILE))

    assert all(torch.equal(lora(weightless)[k], v) for k, v in lora(plain).items())
    assert any(not torch.equal(lora(kept)[k], v) for k, v in lora(plain).items())
    assert kept.final_loss > plain.final_loss  # the subject's loss plus the class images'
