"""The trainer learns: LoRA + pivotal tuning, full fine-tune and pure textual inversion, on
the tiny SDXL and a synthetic subject; and what it writes loads in stock diffusers."""

import json
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionXLPipeline
from safetensors.torch import load_file

from dataset_and_utils import TokenEmbeddingsHandler, load_pixels, read_captions
from tests.train_helpers import make_dataset, one_thread, small_config  # noqa: F401 (autouse)
from training.bundle import write_bundle, write_dry_run_report
from training.loop import STATE_DIR, TrainingDivergedError, run_training
from weights.runtime import pick_runtime
from weights.trained import (
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
    inspect_weights,
)

CPU = pick_runtime("cpu")
TRIGGER_PROMPT = "a photo of <s0><s1>"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("dataset"))


def train(dataset, base, work, **overrides):
    return run_training(small_config(**overrides), dataset, base, work, CPU)


@pytest.fixture(scope="module")
def lora_run(dataset, tiny_models, tmp_path_factory):
    return train(
        dataset,
        tiny_models["base"],
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


def pipeline(tiny_models, weights=None, unet_file=None):
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models["base"])
    pipe.set_progress_bar_config(disable=True)
    if weights is not None and (weights / LORA_FILE).is_file():
        pipe.load_lora_weights(weights, weight_name=LORA_FILE)
    if weights is not None and (weights / EMBEDDINGS_PTI_FILE).is_file():
        handler = TokenEmbeddingsHandler(
            [pipe.text_encoder, pipe.text_encoder_2], [pipe.tokenizer, pipe.tokenizer_2]
        )
        handler.load_embeddings(weights / EMBEDDINGS_PTI_FILE)
    if unet_file is not None:
        pipe.unet.load_state_dict(load_file(str(unet_file)))
    return pipe


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
    embeds, _, pooled, _ = pipe.encode_prompt([prompt] * count, do_classifier_free_guidance=False)
    time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]] * count, dtype=torch.float32)
    noisy = DDPMScheduler.from_config(pipe.scheduler.config).add_noise(latents, noise, timesteps)
    with torch.no_grad():
        prediction = pipe.unet(
            noisy,
            timesteps,
            embeds,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
        ).sample
    return (prediction - noise).pow(2).mean().item()


def distance_to_training(pipe, target, prompt):
    sampled = torch.cat([generate(pipe, prompt, seed, "latent", 10) for seed in range(4)])
    return (sampled - target.mean(0, keepdim=True)).pow(2).mean().item()


def test_lora_with_pivotal_tuning_learns_the_subject(lora_run, tiny_models, dataset):
    base = pipeline(tiny_models)
    tuned = pipeline(tiny_models, lora_run.weights_dir)
    target = training_latents(dataset, base)

    # (a) the loss falls
    assert len(losses(lora_run)) == 40
    before = denoising_loss(base, target, "a photo of TOK, a red square")
    assert denoising_loss(tuned, target, f"{TRIGGER_PROMPT}, a red square") < 0.95 * before

    # (b) the new token rows moved from their initialisation; every other row is untouched
    state = load_file(
        str(lora_run.checkpoints[0] / STATE_DIR / "parameters.safetensors")
    )  # the whole embedding tables at step 20
    fresh = pipeline(tiny_models)
    handler = TokenEmbeddingsHandler(
        [fresh.text_encoder, fresh.text_encoder_2], [fresh.tokenizer, fresh.tokenizer_2]
    )
    handler.initialize_new_tokens(2, torch.Generator().manual_seed(0))  # the run's init
    initial = handler.token_vectors()
    trained = load_file(str(lora_run.weights_dir / EMBEDDINGS_PTI_FILE))
    for index, (name, encoder) in enumerate(
        [("text_encoder", base.text_encoder), ("text_encoder_2", base.text_encoder_2)]
    ):
        (table,) = [
            v for k, v in state.items() if k.startswith(f"{name}.") and "token_embedding" in k
        ]
        original = encoder.get_input_embeddings().weight
        assert torch.equal(table[: original.shape[0]], original)
        moved = trained[f"text_encoders_{index}"] - initial[index]
        assert moved.abs().max() > 1e-3

    # (c) the trigger now draws something else than the base model with the same seed
    assert differs(generate(tuned), generate(base))

    # (d) in latent space, samples with the trigger move toward the training images
    assert distance_to_training(tuned, target, TRIGGER_PROMPT) < 0.95 * distance_to_training(
        base, target, "a photo of TOK"
    )


def test_full_fine_tune_updates_the_unet_in_fp32(dataset, tiny_models, tmp_path):
    result = train(
        dataset,
        tiny_models["base"],
        tmp_path,
        is_lora=False,
        unet_learning_rate=2e-4,
        ti_lr=0,
        max_train_steps=20,
    )
    files = sorted(p.name for p in result.weights_dir.iterdir())
    assert files == [SPECIAL_PARAMS_FILE, UNET_FILE]
    base = pipeline(tiny_models)
    tuned_state = load_file(str(result.weights_dir / UNET_FILE))
    changed = [
        name
        for name, tensor in base.unet.state_dict().items()
        if not torch.equal(tensor, tuned_state[name])
    ]
    assert len(changed) > 0.9 * len(tuned_state)  # really the UNet, not a no-op
    assert all(t.dtype == torch.float32 for t in tuned_state.values())
    tuned = pipeline(tiny_models, unet_file=result.weights_dir / UNET_FILE)
    prompt = "a photo of TOK"
    target = training_latents(dataset, base)
    assert denoising_loss(tuned, target, prompt) < 0.95 * denoising_loss(base, target, prompt)
    assert differs(generate(tuned, prompt), generate(base, prompt))


def test_pure_textual_inversion_trains_only_the_tokens(dataset, tiny_models, tmp_path):
    result = train(dataset, tiny_models["base"], tmp_path, lora_lr=0, ti_lr=3e-2,
                   max_train_steps=20)  # fmt: skip
    assert result.plan.pivot_step == 20  # tokens train to the end
    files = {p.name for p in result.weights_dir.iterdir()}
    assert LORA_FILE not in files and UNET_FILE not in files
    assert {EMBEDDINGS_PTI_FILE, EMBEDDINGS_FILE, SPECIAL_PARAMS_FILE} <= files
    assert result.summary["trainable_parameters"] == sum(
        e.get_input_embeddings().weight.numel()
        for e in (pipeline(tiny_models).text_encoder, pipeline(tiny_models).text_encoder_2)
    ) + 2 * (32 + 64)  # the two enlarged embedding tables
    tuned, base = pipeline(tiny_models, result.weights_dir), pipeline(tiny_models)
    assert differs(generate(tuned, output_type="latent"), generate(base, output_type="latent"))
    target = training_latents(dataset, base)
    before = denoising_loss(base, target, "a photo of TOK, a red square")
    assert denoising_loss(tuned, target, f"{TRIGGER_PROMPT}, a red square") < before
    assert inspect_weights(result.weights_dir).embeddings_pti is not None


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
    with pytest.raises(TrainingDivergedError, match="training diverged"):
        train(dataset, tiny_models["base"], tmp_path, lora_lr=1e12, ti_lr=0, max_grad_norm=0,
              max_train_steps=10)  # fmt: skip
    assert not (tmp_path / "weights").exists()


def test_lora_formats_load_in_stock_diffusers_and_agree(dataset, tiny_models, tmp_path):
    result = train(
        dataset,
        tiny_models["base"],
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
    assert {k.split("_")[1] for k in kohya} == {"unet", "te1", "te2"}
    assert all(v.item() == 2.0 for k, v in kohya.items() if k.endswith(".alpha"))

    reference = generate(pipeline(tiny_models, weights))
    from_kohya = pipeline(tiny_models)
    from_kohya.load_lora_weights(weights, weight_name=LORA_KOHYA_FILE)
    TokenEmbeddingsHandler(
        [from_kohya.text_encoder, from_kohya.text_encoder_2],
        [from_kohya.tokenizer, from_kohya.tokenizer_2],
    ).load_embeddings(weights / EMBEDDINGS_PTI_FILE)
    np.testing.assert_allclose(generate(from_kohya), reference, atol=1e-4)

    # embeddings.safetensors, one text encoder at a time with diffusers' textual inversion
    from_ti = pipeline(tiny_models)
    from_ti.load_lora_weights(weights, weight_name=LORA_FILE)
    vectors = load_file(str(weights / EMBEDDINGS_FILE))
    for key, encoder, tokenizer in (
        ("clip_l", from_ti.text_encoder, from_ti.tokenizer),
        ("clip_g", from_ti.text_encoder_2, from_ti.tokenizer_2),
    ):
        from_ti.load_textual_inversion(
            vectors[key], token=["<s0>", "<s1>"], text_encoder=encoder, tokenizer=tokenizer
        )
    np.testing.assert_allclose(generate(from_ti), reference, atol=1e-5)
    assert differs(reference, generate(pipeline(tiny_models)))


def test_bundle_holds_every_promised_file(lora_run, tmp_path):
    preview = tmp_path / "preview.png"
    preview.write_bytes((lora_run.work_dir / "samples").glob("*.png").__next__().read_bytes())
    bundle = write_bundle(lora_run, tmp_path / BUNDLE_FILE, "tiny", preview=preview)
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
    assert not any(STATE_DIR in name for name in names)  # resume state stays out
    assert record["plan"]["steps"] == 40 and record["token_map"] == {"TOK": "<s0><s1>"}
    assert "diffusers" in record["libraries"]
    assert "<s0><s1>" in card and "load_lora_weights" in card
    assert not list(tmp_path.glob("*.partial"))


def test_dry_run_times_a_few_steps_and_reports_the_plan(dataset, tiny_models, tmp_path):
    config = small_config(max_train_steps=500, train_batch_size=2, num_repeats=2)
    timing = run_training(config, dataset, tiny_models["base"], tmp_path / "run", CPU,
                          timing_steps=3)  # fmt: skip
    assert len(timing.step_seconds) == 3 and timing.seconds_per_step > 0
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    prepared = SimpleNamespace(
        images=read_captions(dataset), skipped=[("notes.docx", "not an image")], preview=None
    )
    report = write_dry_run_report(timing, prepared, tmp_path / "dry_run.tar", 1.0)
    with tarfile.open(report) as tar:
        plan = json.load(tar.extractfile("plan.json"))
    assert plan["steps"] == 500 and plan["epochs"] == 125  # 4 images x 2 repeats / batch 2
    assert plan["skipped"] == [{"file": "notes.docx", "reason": "not an image"}]
    assert plan["images"][0]["caption"] == "a photo of TOK, a red square"
    assert plan["estimated_training_seconds"] == pytest.approx(500 * timing.seconds_per_step, 0.01)
