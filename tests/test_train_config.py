"""Training settings, step arithmetic and learning-rate schedule: no models needed."""

import json
import random
import re
import sys
from pathlib import Path

import pytest
import torch

from formats.tokens import apply_token_map
from training.caption_augment import caption_for_step
from training.config import LEARNING_INPUTS, PRESETS, InvalidTrainingConfig, TrainingConfig
from training.flux_inputs import FluxTrainingInputs
from training.schedule import BatchSchedule, TrainingPlan, build_lr_scheduler, build_optimizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"resolution": 500}, "multiple of 64"),
        ({"is_lora": False, "train_text_encoder": True}, "needs is_lora=true"),
        ({"ti_lr": 0, "lora_lr": 0}, "Nothing would train"),
        ({"lora_lr": 0, "ti_frac": 0.5}, "nothing would train after the pivot"),
        ({"ti_frac": 1.5}, "ti_frac=1.5"),
        ({"ti_lr": 0, "ti_frac": 0.5}, "ti_lr=0"),
        ({"lr_scheduler": "exponential"}, "constant, constant_with_warmup"),
        ({"optimizer": "sgd"}, "adamw, adamw8bit"),
        ({"token_string": "my token"}, "one word"),
        ({"caption_dropout": 1.0}, "caption_dropout"),
        ({"max_train_steps": 0}, "max_train_steps=0"),
        ({"lora_lr": float("nan")}, "lora_lr=nan: must be between 0.0 and 10.0"),
        ({"lora_lr": 1e308}, r"lora_lr=1e\+308: must be between 0.0 and 10.0"),
        ({"lora_method": "loha"}, "lora, dora, lokr"),
        ({"lora_method": "dora", "is_lora": False}, "lora_method='dora' shapes a LoRA"),
        ({"lora_method": "lokr", "base_quantization": "int8"}, "base_quantization='none'"),
        ({"lora_method": "lokr", "lora_plus_ratio": 16}, "no B matrices"),
    ],
)
def test_invalid_combinations_fail_before_any_work(inputs, message):
    with pytest.raises(InvalidTrainingConfig, match=message):
        TrainingConfig(seed=0, **inputs)


def test_every_problem_is_reported_at_once():
    with pytest.raises(InvalidTrainingConfig) as error:
        TrainingConfig(seed=0, resolution=10, lora_rank=0)
    assert "resolution=10" in str(error.value) and "lora_rank=0" in str(error.value)


def test_modes_and_pivot_defaults():
    assert TrainingConfig(seed=0).mode == "LoRA + pivotal tuning"
    assert TrainingConfig(seed=0).pivot_fraction == 0.5
    pure_ti = TrainingConfig(seed=0, lora_lr=0)
    assert pure_ti.mode == "textual inversion" and pure_ti.pivot_fraction == 1.0
    assert not pure_ti.trains_unet
    full = TrainingConfig(seed=0, is_lora=False)
    assert full.trains_full_unet and not full.trains_unet_lora
    assert TrainingConfig(seed=0, lora_rank=8).effective_lora_alpha == 8.0
    assert TrainingConfig(seed=0, lora_rank=8, lora_alpha=4).effective_lora_alpha == 4.0


# Replicate's SDXL trainer's learning inputs: what a request that sets any of them trains with.
REPLICATE_SUBJECT = dict(optimizer="adamw", lora_lr=1e-4, ti_lr=3e-4, lora_rank=32,
                         lr_scheduler="constant", lr_warmup_steps=100, min_snr_gamma=0.0,
                         ema_decay=0.0)  # fmt: skip


def learning(config: TrainingConfig) -> dict:
    return {name: getattr(config, name) for name in LEARNING_INPUTS}


def test_presets_fill_only_the_inputs_left_empty():
    subject = TrainingConfig(seed=0)
    assert subject.caption_prefix == "a photo of TOK, " and subject.use_masks
    style = TrainingConfig(seed=0, lora_type="style")
    assert style.caption_prefix == "in the style of TOK, "
    assert style.lora_lr == 4e-4 and not style.use_masks
    custom = TrainingConfig(
        seed=0, lora_type="style", caption_prefix="a painting by TOK, ", lora_lr=2e-4
    )
    assert custom.caption_prefix == "a painting by TOK, " and custom.lora_lr == 2e-4
    # Sent equal to the subject default: sent is sent, the preset does not replace it.
    sent = TrainingConfig(
        seed=0, lora_type="style", lora_lr=1e-4, caption_prefix="a photo of TOK, "
    )
    assert sent.lora_lr == 1e-4 and sent.caption_prefix == "a photo of TOK, "


def test_a_request_that_sets_no_learning_input_trains_with_the_recipe():
    recipe = learning(TrainingConfig(seed=0))
    assert recipe == PRESETS["subject"].recipe and recipe != REPLICATE_SUBJECT
    assert learning(TrainingConfig(seed=0, max_train_steps=400, resolution=1024)) == recipe


ASKED = [dict(lora_lr=1e-4), dict(ti_lr=3e-4), dict(lora_rank=32), dict(lr_scheduler="constant"),
         dict(optimizer="adamw")]  # fmt: skip


@pytest.mark.parametrize("asked", ASKED)
def test_a_request_that_sets_a_learning_input_gets_replicates_values_for_the_rest(asked):
    assert learning(TrainingConfig(seed=0, **asked)) == REPLICATE_SUBJECT


def test_a_learning_input_is_trained_as_sent_and_the_rest_as_replicates():
    config = TrainingConfig(seed=0, lora_lr=3e-4, lora_rank=16)
    assert learning(config) == {**REPLICATE_SUBJECT, "lora_lr": 3e-4, "lora_rank": 16}
    # A full fine-tune is not a LoRA: its rates are Replicate's.
    assert learning(TrainingConfig(seed=0, is_lora=False)) == REPLICATE_SUBJECT


def test_the_presets_trigger_is_the_token_string():
    assert TrainingConfig(seed=0, token_string="sks").caption_prefix == "a photo of sks, "
    style = TrainingConfig(seed=0, token_string="sks", lora_type="style")
    assert style.caption_prefix == "in the style of sks, "


def test_an_empty_seed_is_drawn_and_kept():
    drawn = {TrainingConfig().seed for _ in range(4)}
    assert len(drawn) > 1 and all(0 <= seed < 2**32 for seed in drawn)
    with pytest.raises(InvalidTrainingConfig, match="seed=-1: must be between 0 and"):
        TrainingConfig(seed=-1)


def test_step_arithmetic_epochs_repeats_and_precedence():
    # 5 images x 3 repeats in batches of 4 -> 4 batches per epoch.
    config = TrainingConfig(seed=0, train_batch_size=4, num_repeats=3, max_train_steps=None,
                            num_train_epochs=10)  # fmt: skip
    plan = TrainingPlan.build(config, [5], num_processes=1)
    assert plan.micro_batches_per_epoch == 4
    assert plan.max_train_steps == 40 and plan.epochs == 10
    # max_train_steps takes precedence; accumulation and processes multiply the batch.
    config = TrainingConfig(seed=0, train_batch_size=2, max_train_steps=7,
                            gradient_accumulation_steps=3)  # fmt: skip
    plan = TrainingPlan.build(config, [5, 3], num_processes=2)
    assert plan.global_batch_size == 4 and plan.effective_batch_size == 12
    assert plan.micro_batches_per_epoch == 2 + 1
    assert plan.max_train_steps == 7 and plan.epochs == 7  # 21 micro-batches / 3 per epoch
    assert plan.pivot_step == 4  # round(7 * 0.5)


def test_batches_cover_each_image_per_epoch_stay_in_one_bucket_and_depend_only_on_seed():
    buckets = [[0, 1, 2, 3, 4], [5, 6]]
    schedule = BatchSchedule(buckets, repeats=2, global_batch=4, seed=0)
    epoch = [schedule.micro_batch(i, 4) for i in range(4)]  # 10/4 -> 3 + 4/4 -> 1
    assert all(len(batch) == 4 for batch in epoch)
    assert all(set(b) <= set(buckets[0]) or set(b) <= set(buckets[1]) for b in epoch)
    seen = [i for batch in epoch for i in batch]
    assert all(seen.count(i) >= 2 for i in range(7))  # every image, repeats times
    again = BatchSchedule(buckets, repeats=2, global_batch=4, seed=0)
    assert [again.micro_batch(i, 4) for i in (7, 2)] == [schedule.micro_batch(i, 4) for i in (7, 2)]
    other = BatchSchedule(buckets, repeats=2, global_batch=4, seed=1)
    assert [other.micro_batch(i, 4) for i in range(8)] != [
        schedule.micro_batch(i, 4) for i in range(8)
    ]


def scheduled_rates(config, steps):
    plan = TrainingPlan.build(config, [4], num_processes=1)
    unet, tokens = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    groups = [
        {"name": "unet_lora", "params": [unet], "lr": 1e-4},
        {"name": "token_embeddings", "params": [tokens], "lr": 3e-4, "pivotal": True},
    ]
    optimizer = build_optimizer("adamw", groups, 0.0, torch.device("cpu"))
    scheduler = build_lr_scheduler(optimizer, config, plan)
    rates = []
    for _ in range(steps):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return plan, rates


def test_one_scheduler_drives_both_groups_across_the_pivot():
    config = TrainingConfig(seed=0, max_train_steps=10, ti_frac=0.4, lr_scheduler="linear",
                            lr_warmup_steps=2)  # fmt: skip
    plan, rates = scheduled_rates(config, 10)
    assert plan.pivot_step == 4
    assert rates[0] == pytest.approx([0.5e-4, 1.5e-4])  # warmup
    assert rates[2] == pytest.approx([1e-4, 3e-4])  # peak
    assert rates[3][1] > 0 and all(r[1] == 0 for r in rates[4:])  # tokens stop at the pivot
    lora = [r[0] for r in rates[2:]]
    assert lora == sorted(lora, reverse=True) and lora[-1] > 0  # the LoRA keeps decaying
    assert rates[4][0] == pytest.approx(1e-4 * (1 - 2 / 8))


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "cosine",
                                  "cosine_with_restarts", "step"])  # fmt: skip
def test_schedules_warm_up_and_stay_in_range(name):
    config = TrainingConfig(seed=0, max_train_steps=40, lr_scheduler=name, lr_warmup_steps=4)
    _, rates = scheduled_rates(config, 40)
    lora = [r[0] for r in rates]
    assert all(0 <= r <= 1e-4 + 1e-12 for r in lora)
    if name == "constant":
        assert lora[0] == pytest.approx(1e-4)
    else:
        assert lora[0] == pytest.approx(0.25e-4) and lora[3] == pytest.approx(1e-4)


def test_trigger_substitution_is_whole_word():
    token_map = {"TOK": "<s0><s1>"}
    assert apply_token_map("a photo of TOK, TOKEN", token_map) == "a photo of <s0><s1>, TOKEN"
    assert apply_token_map("TOK's hat", token_map) == "<s0><s1>'s hat"


def test_caption_augmentations_keep_the_trigger_part_in_place():
    config = TrainingConfig(seed=0, shuffle_tokens=True, keep_tokens=1)
    caption = "a photo of <s0><s1>, red, square, blue, background"
    outputs = {caption_for_step(caption, config, random.Random(i)) for i in range(20)}
    assert len(outputs) > 1
    assert all(o.startswith("a photo of <s0><s1>, ") for o in outputs)
    assert all(sorted(o.split(", ")) == sorted(caption.split(", ")) for o in outputs)
    dropout = TrainingConfig(seed=0, caption_dropout=0.5)
    dropped = [caption_for_step(caption, dropout, random.Random(i)) for i in range(40)]
    assert 5 < dropped.count("") < 35 and caption in dropped


def test_masked_loss_is_averaged_over_the_mask_and_min_snr_weights_it():
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    from training.objectives import diffusion_loss

    schedule = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    target = torch.zeros(2, 4, 8, 8)
    prediction = torch.zeros(2, 4, 8, 8)
    prediction[:, :, :4, :4] = 2.0  # error 4 inside a quarter of the image
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, :4, :4] = 1.0
    timesteps = torch.tensor([10, 900])
    plain = TrainingConfig(seed=0, min_snr_gamma=0)
    # Over the mask's area: the subject's full error, not a quarter of it.
    assert diffusion_loss(prediction, target, masks, timesteps, schedule, plain) == 4.0
    assert diffusion_loss(prediction, target, None, timesteps, schedule, plain) == 1.0
    weighted = diffusion_loss(
        prediction, target, masks, timesteps, schedule, TrainingConfig(seed=0, min_snr_gamma=5)
    )
    snr = compute_snr(schedule, timesteps)
    assert weighted.item() == pytest.approx((4.0 * snr.clamp(max=5) / snr).mean().item())
    assert weighted < 4.0  # the low-noise step (high SNR) is down-weighted


def test_resolution_defaults_to_replicates_768():
    assert TrainingConfig(seed=0).resolution == 768
    assert TrainingConfig(seed=0, resolution=1024).resolution == 1024
    with pytest.raises(InvalidTrainingConfig, match="resolution=4096: must be between 64 and"):
        TrainingConfig(seed=0, resolution=4096)


def test_command_line_settings_parse_as_json_where_they_can():
    from training.config import parse_settings

    settings = parse_settings(["lora_rank=16", "token_string=sks", 'sample_prompts=["a", "b"]'])
    assert settings == {"lora_rank": 16, "token_string": "sks", "sample_prompts": ["a", "b"]}
    assert TrainingConfig(seed=0, **settings).sample_prompts == ("a", "b")


def test_prodigy_needs_one_learning_rate_for_every_trained_group():
    with pytest.raises(InvalidTrainingConfig, match=r"must be equal \(lora_lr=0.5, ti_lr=1\)"):
        TrainingConfig(seed=0, optimizer="prodigy", lora_lr=0.5, ti_lr=1.0)
    TrainingConfig(seed=0, optimizer="prodigy", lora_lr=1.0, ti_lr=1.0)
    TrainingConfig(seed=0, optimizer="prodigy", lora_lr=1.0, ti_lr=0)  # tokens do not train


def test_trigger_words_are_one_short_word_and_not_an_inserted_token():
    for trigger, message in [
        ("x" * 100_000, "token_string has 100,000 characters: at most 64"),
        ("<s0>", "<s0>, <s1>, ... are the tokens training inserts"),
        ("my dog", "use one word without spaces"),
    ]:
        with pytest.raises(InvalidTrainingConfig, match=re.escape(message)):
            TrainingConfig(token_string=trigger)
    with pytest.raises(InvalidTrainingConfig, match=r"trigger_word='a<s1>'"):
        FluxTrainingInputs(trigger_word="a<s1>").training_config()
    for container in ("sdxl", "flux"):  # the schema bounds it too: a 422 before any work
        schema = json.loads((ROOT / ".cog" / "schemas" / f"{container}.json").read_text())
        inputs = schema["components"]["schemas"]["TrainingInput"]["properties"]
        trigger = inputs["token_string" if container == "sdxl" else "trigger_word"]
        assert trigger["maxLength"] == 64


def test_without_bitsandbytes_8_bit_flux_optimizers_train_with_32_bit_states(monkeypatch, capsys):
    """A CPU setup without bitsandbytes: the Flux container trains an 8-bit optimizer's
    algorithm with 32-bit states (what differs is memory only) and says so; Lion has no
    torch version, so lion and lion8bit are refused there, as the SDXL container refuses
    every bitsandbytes optimizer."""
    from training.flux_inputs import FluxTrainingInputs

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    for asked, trained in (("adamw8bit", "adamw"), ("adam8bit", "adam"), ("adagrad", "adagrad")):
        assert FluxTrainingInputs(optimizer=asked, seed=0).training_config().optimizer == trained
    assert "optimizer adam8bit needs bitsandbytes, absent here: training with adam." in (
        capsys.readouterr().out
    )
    for optimizer in ("lion", "lion8bit"):
        with pytest.raises(InvalidTrainingConfig, match=f"optimizer='{optimizer}' needs bitsand"):
            FluxTrainingInputs(optimizer=optimizer, seed=0).training_config()
    with pytest.raises(InvalidTrainingConfig, match="optimizer='adam8bit' needs bitsandbytes"):
        TrainingConfig(seed=0, optimizer="adam8bit")


@pytest.mark.parametrize(
    ("batch", "processes", "per_process", "steps", "warmup"),
    [
        (1, 8, 1, 125, 12),  # FLUX.1's default on 8 GPUs: 8x the images per step
        (4, 8, 1, 500, 50),  # SDXL's default batch 4 on 8 GPUs
        (4, 2, 2, 1000, 100),  # a batch the processes divide: steps as on one GPU
        (4, 3, 2, 667, 67),  # 2 x 3 = 6 images per step for the 4 asked
    ],
)
def test_every_process_trains_and_the_steps_keep_the_images_seen(
    batch, processes, per_process, steps, warmup
):
    from training.processes import data_parallel

    config = TrainingConfig(
        seed=0, train_batch_size=batch, max_train_steps=1000, lr_warmup_steps=100
    )
    recipe = data_parallel(config, processes)
    each = recipe.config(config)
    assert each.train_batch_size == per_process and recipe.global_batch == per_process * processes
    assert (each.max_train_steps, each.lr_warmup_steps) == (steps, warmup)
    assert each.checkpointing_steps == 0  # none stays none
    assert abs(steps * recipe.global_batch - 1000 * batch) <= recipe.global_batch  # one step
    huge = recipe.config(TrainingConfig(seed=0, train_batch_size=batch, checkpointing_steps=999999))
    assert huge.checkpointing_steps >= huge.max_train_steps  # "never" stays never


def test_a_hub_upload_needs_both_inputs_and_a_repository_id_before_any_work():
    from training.flux_inputs import FluxTrainingInputs

    assert FluxTrainingInputs().accounts().hub is None
    with pytest.raises(InvalidTrainingConfig, match="hf_repo_id is empty"):
        FluxTrainingInputs(hf_token="hf_x").accounts()
    with pytest.raises(InvalidTrainingConfig, match="hf_token is empty"):
        FluxTrainingInputs(hf_repo_id="me/lora").accounts()
    with pytest.raises(InvalidTrainingConfig, match="hf_repo_id='me/my/lora'"):
        FluxTrainingInputs(hf_repo_id="me/my/lora", hf_token="hf_x").accounts()
    accounts = FluxTrainingInputs(
        hf_repo_id="me/lora", hf_token="hf_x", wandb_api_key="k1"
    ).accounts()
    assert accounts.hub.repo_id == "me/lora" and "hf_x" not in repr(accounts)
    assert "k1" not in repr(accounts)  # the keys never reach a log through a repr


def test_a_lora_or_tokens_alone_for_a_subject_is_told_which_method_learns_one():
    from families import FLUX, SDXL

    lora_alone = TrainingConfig(seed=0, ti_lr=0).method_advice(SDXL)
    assert "ti_lr=0" in lora_alone and "pivotal tuning" in lora_alone
    tokens_alone = TrainingConfig(seed=0, lora_lr=0).method_advice(SDXL)
    assert "lora_lr=0" in tokens_alone and "pivotal tuning" in tokens_alone
    # Pivotal tuning, a style, and a family that trains no tokens (the trigger is a word of
    # FLUX.1's captions, where a LoRA alone is the method): nothing to advise.
    assert TrainingConfig(seed=0).method_advice(SDXL) is None
    assert TrainingConfig(seed=0, ti_lr=0, lora_type="style").method_advice(SDXL) is None
    assert TrainingConfig(seed=0, ti_lr=0).method_advice(FLUX) is None
