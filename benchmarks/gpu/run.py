"""Real-scale GPU benchmark: SDXL base's (or FLUX.1-dev's) architecture with random bf16 weights,
built on the GPU (no download), measured the way users run it, in one table.

    .venv/bin/python benchmarks/gpu/run.py                  # on one H100/H200: a few minutes
    .venv/bin/python benchmarks/gpu/run.py --family flux    # FLUX.1-dev: a few minutes more
    .venv/bin/python benchmarks/gpu/run.py --smoke [--family flux]  # tiny models, CPU (CI)

Rows:
- training, s/step and peak memory, at 1024² batch 1 and at Replicate's defaults (768² batch
  4), LoRA rank 32 + two new tokens: our loop (`run_training`), a bare forward + backward of
  the LoRA UNet (the floor), and the step diffusers' advanced DreamBooth-LoRA example
  computes (peft LoRA, the prompt through the text encoders with trainable embeddings, MSE,
  AdamW);
- 30-step 1024² text-to-image with guidance: `predict()`'s engine against a plain diffusers
  pipeline, each against the FLOP floor (FLOPs counted by torch, at the GPU's peak);
- switching between two rank-32 LoRAs (benchmarks/bench_switch.py on this device);
- each opt-in GPU speed option (weights/runtime.py SPEED_OPTIONS: TF32, channels-last,
  regional torch.compile) alone, on our training step and our generation.

FLUX.1 rows: training at 1024² batch 1, LoRA rank 16 (Replicate's Flux recipe), our loop in
bf16 and with the int8 base plus gradient checkpointing (the 24 GB setting), against a bare
LoRA-transformer forward + backward; 28-step 1024² generation with guidance 3.5, the engine
against a plain `FluxPipeline` and the FLOP floor.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float32: "fp32"}
# Dense bf16 peak, TFLOP/s, by device name (the floor of the generation rows).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


@dataclass(frozen=True)
class Scale:
    name: str
    family: str  # "sdxl" or "flux"
    device: str
    dtype: torch.dtype
    cases: tuple[tuple[int, int], ...]  # (resolution, batch) of the training rows
    generation_side: int
    generation_steps: int
    timed_steps: int


SCALES = {
    ("sdxl", False): Scale(
        "real SDXL", "sdxl", "cuda", torch.bfloat16, ((1024, 1), (768, 4)), 1024, 30, 6
    ),
    ("sdxl", True): Scale(
        "tiny SDXL (smoke)", "sdxl", "cpu", torch.float32, ((64, 1), (64, 4)), 64, 3, 2
    ),
    ("flux", False): Scale(
        "FLUX.1-dev architecture", "flux", "cuda", torch.bfloat16, ((1024, 1),), 1024, 28, 4
    ),
    ("flux", True): Scale(
        "tiny FLUX.1 (smoke)", "flux", "cpu", torch.float32, ((64, 1),), 256, 3, 2
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    parser.add_argument("--family", choices=("sdxl", "flux"), default="sdxl")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["train", "generate", "switch", "speed"]
    )
    args = parser.parse_args()
    scale = SCALES[args.family, args.smoke]
    if scale.device == "cuda" and not torch.cuda.is_available():
        sys.exit("No CUDA device: run with --smoke, or on a GPU.")
    if scale.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        rows = run(scale, work, skip=set(args.skip))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    device = torch.cuda.get_device_name() if scale.device == "cuda" else "CPU"
    print(f"\n{scale.name} on {device}, {scale.dtype}:\n")
    print(table(rows))


def run(scale: Scale, work: Path, skip: set[str]) -> list[dict]:
    from benchmarks.flux_architecture import save_flux_folder
    from benchmarks.sdxl_architecture import save_sdxl_folder
    from weights.embedded.tiny import ensure_tiny_model

    started = time.perf_counter()
    if scale.device == "cpu":
        folder = ensure_tiny_model("base", work / "cache", family=scale.family)
    else:
        save = save_flux_folder if scale.family == "flux" else save_sdxl_folder
        folder = save(work / scale.family, scale.device, scale.dtype)
        torch.cuda.empty_cache()
    print(f"model folder ready in {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    if scale.family == "flux":
        if "train" not in skip:
            rows += flux_training_rows(scale, folder, work)
        if "generate" not in skip:
            rows += flux_generation_rows(scale, folder, work)
        return rows  # the switch rows measure the SDXL UNet's slots
    if "train" not in skip:
        for resolution, batch in scale.cases:
            rows += training_rows(scale, folder, work, resolution, batch)
    if "generate" not in skip:
        rows += generation_rows(scale, folder, work)
    if "switch" not in skip:
        rows += switch_rows(scale, work)
    if "speed" not in skip:
        rows += speed_rows(scale, folder, work)
    return rows


# --- training ---------------------------------------------------------------------------------


def training_rows(scale: Scale, folder: Path, work: Path, resolution: int, batch: int) -> list:
    config = sdxl_config(resolution, batch)
    setting = f"{resolution}² batch {batch}, LoRA r32 + 2 tokens"
    ours = our_training_row(scale, folder, work, config, "train: our loop", setting)
    floor = step_seconds(scale, folder, config, text_trains=False)
    reference = step_seconds(scale, folder, config, text_trains=True)
    return [
        ours,
        {**floor, "what": "train: LoRA UNet forward + backward (floor)", "setting": setting},
        {**reference, "what": "train: diffusers' advanced example's step", "setting": setting},
    ]


def sdxl_config(resolution: int, batch: int):
    from training.config import TrainingConfig

    return TrainingConfig(
        seed=0,
        resolution=resolution,
        train_batch_size=batch,
        max_train_steps=100,
        lora_rank=32,
        lr_warmup_steps=0,
        checkpointing_steps=0,
        verbose=False,
    )


def our_training_row(
    scale: Scale, folder: Path, work: Path, config, what: str, setting: str, speed=()
) -> dict:
    """Our loop's median step and peak memory (a dry run of a few timed steps)."""
    from train_helpers import make_dataset

    from training.loop import run_training
    from weights.runtime import pick_runtime

    dataset = make_dataset(
        work / f"dataset-{config.resolution}", count=4, masks=config.use_masks,
        size=config.resolution,
    )  # fmt: skip
    runtime = pick_runtime(scale.device, DTYPE_NAMES[scale.dtype], speed)
    with peak_memory(scale) as peak:
        timing = run_training(
            config, dataset, folder, work / "run", runtime, timing_steps=scale.timed_steps
        )
    return {"what": what, "setting": setting, "seconds": timing.seconds_per_step,
            "peak_gb": peak.gb}  # fmt: skip


def speed_rows(scale: Scale, folder: Path, work: Path) -> list:
    """Each GPU speed option on its own, against the rows without it: our training step at
    the first training setting, and our generation."""
    from weights.runtime import SPEED_OPTIONS

    resolution, batch = scale.cases[0]
    config = sdxl_config(resolution, batch)
    setting = f"{resolution}² batch {batch}, LoRA r32 + 2 tokens"
    side, steps = scale.generation_side, scale.generation_steps
    request = sdxl_request(side, steps)
    rows = []
    for option in SPEED_OPTIONS:
        what = f"train: our loop + {option}"
        rows.append(our_training_row(scale, folder, work, config, what, setting, (option,)))
        if option != "compile":  # the predictor does not compile (LoRA slots rebind weights)
            settings = replace(engine_settings(scale, folder, work), speed=(option,))
            with peak_memory(scale) as peak:
                seconds = engine_seconds(scale, settings, request, work / "outputs")
            rows.append({"what": f"generate: predict()'s engine + {option}", "seconds": seconds,
                         "setting": f"{side}², {steps} steps, guidance 7.5",
                         "peak_gb": peak.gb})  # fmt: skip
        # TF32 is process-wide: off again for the next option.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return rows


def step_seconds(scale: Scale, folder: Path, config, text_trains: bool) -> dict:
    """The median step of a LoRA UNet on random latents: bare forward + backward (the floor),
    or, with `text_trains`, as diffusers' advanced example computes it: the captions through
    both text encoders with trainable token embeddings, MSE, AdamW."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig

    from families import SDXL

    device = torch.device(scale.device)
    with peak_memory(scale) as peak:
        pipe = StableDiffusionXLPipeline.from_pretrained(folder, dtype=scale.dtype).to(device)
        unet = pipe.unet.requires_grad_(False)
        unet.add_adapter(
            LoraConfig(
                r=config.lora_rank,
                lora_alpha=config.lora_rank,
                target_modules=list(SDXL.lora_target_modules),
            )  # fmt: skip
        )
        trained = [p for p in unet.parameters() if p.requires_grad]
        for p in trained:
            p.data = p.data.float()  # LoRA in fp32 under autocast, as both trainers keep it
        encoders = (pipe.text_encoder, pipe.text_encoder_2)
        for encoder in encoders:
            encoder.requires_grad_(False)
            if text_trains:
                table = encoder.get_input_embeddings()
                table.weight.data = table.weight.data.float()
                table.weight.requires_grad_(True)
                trained.append(table.weight)
        optimizer = torch.optim.AdamW(trained, lr=1e-4)
        batch, side = config.train_batch_size, config.resolution // 8
        latents = torch.randn(batch, 4, side, side, device=device)
        time_ids = torch.tensor([[config.resolution] * 2 + [0, 0] + [config.resolution] * 2],
                                device=device, dtype=torch.float32).repeat(batch, 1)  # fmt: skip
        with torch.no_grad():
            fixed = pipe.encode_prompt(["a photo of TOK"] * batch, device=device,
                                       do_classifier_free_guidance=False)  # fmt: skip
        times = []
        for _ in range(scale.timed_steps):
            synchronize(scale)
            started = time.perf_counter()
            with torch.autocast(
                device.type, dtype=scale.dtype, enabled=scale.dtype != torch.float32
            ):
                if text_trains:
                    embeds, _, pooled, _ = pipe.encode_prompt(
                        ["a photo of TOK"] * batch, device=device, do_classifier_free_guidance=False
                    )
                else:
                    embeds, _, pooled, _ = fixed
                noise = torch.randn_like(latents)
                timesteps = torch.randint(0, 1000, (batch,), device=device)
                noisy = pipe.scheduler.add_noise(latents, noise, timesteps)
                added = {"text_embeds": pooled, "time_ids": time_ids}
                prediction = unet(noisy, timesteps, embeds, added_cond_kwargs=added).sample
                loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
            loss.backward()
            if text_trains:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            synchronize(scale)
            times.append(time.perf_counter() - started)
        del pipe, unet, optimizer
    return {"seconds": statistics.median(times[1:] or times), "peak_gb": peak.gb}


# --- generation -------------------------------------------------------------------------------


def generation_rows(scale: Scale, folder: Path, work: Path) -> list:
    side, steps = scale.generation_side, scale.generation_steps
    setting = f"{side}², {steps} steps, guidance 7.5"
    floor = generation_floor_seconds(scale, folder, side, steps)
    settings = engine_settings(scale, folder, work)
    request = sdxl_request(side, steps)
    with peak_memory(scale) as peak:
        ours = engine_seconds(scale, settings, request, work / "outputs")
    with peak_memory(scale) as plain_peak:
        reference = pipeline_seconds(scale, folder, side, steps)
    return [
        {"what": "generate: predict()'s engine", "setting": setting, "seconds": ours,
         "peak_gb": peak.gb, "floor": floor},
        {"what": "generate: plain diffusers pipeline", "setting": setting, "seconds": reference,
         "peak_gb": plain_peak.gb, "floor": floor},
    ]  # fmt: skip


def sdxl_request(side: int, steps: int):
    """The generation rows' request: one unmarked, unchecked image of `side`² pixels."""
    from generation.request import GenerationRequest

    return GenerationRequest(prompt="a photo of a cat", width=side, height=side,
                             num_inference_steps=steps, seed=1, apply_watermark=False,
                             disable_safety_checker=True)  # fmt: skip


def engine_settings(scale: Scale, folder: Path, work: Path):
    """The engine's settings for the benchmark's base folder (tiny refiner and checker)."""
    from weights.settings import ModelSettings

    return ModelSettings(
        base_model=str(folder),
        refiner_model="tiny",
        cache_dir=work / "cache",
        device=scale.device,
        dtype=DTYPE_NAMES[scale.dtype],
        safety_checker_model="tiny",
    )


def engine_seconds(scale: Scale, settings, request, outputs: Path) -> float:
    from generation.engine import GenerationEngine

    engine = GenerationEngine(settings)
    return median_seconds(scale, lambda: engine.generate(request, outputs), 2)


def pipeline_seconds(scale: Scale, folder: Path, side: int, steps: int) -> float:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder, dtype=scale.dtype).to(scale.device)
    pipe.set_progress_bar_config(disable=True)

    def plain():
        generator = torch.Generator("cpu").manual_seed(1)
        pipe("a photo of a cat", width=side, height=side, num_inference_steps=steps,
             guidance_scale=7.5, generator=generator)  # fmt: skip

    return median_seconds(scale, plain, 2)


def generation_floor_seconds(scale: Scale, folder: Path, side: int, steps: int) -> float | None:
    """FLOPs of `steps` guided UNet passes (batch 2) and one VAE decode, counted by torch on
    the real modules, at the GPU's dense peak; None where no peak is known."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(scale.device)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", dtype=scale.dtype)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=scale.dtype)
    unet, vae = unet.to(device), vae.to(device)
    latent = torch.randn(2, 4, side // 8, side // 8, device=device, dtype=scale.dtype)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=scale.dtype)
    pooled_width = (
        unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    )
    pooled = torch.randn(2, pooled_width, device=device, dtype=scale.dtype)
    time_ids = torch.tensor([[side, side, 0, 0, side, side]] * 2, device=device, dtype=scale.dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(latent, 500, text, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})
    unet_flops = counter.get_total_flops()
    with torch.no_grad(), counter:
        vae.decode(latent[:1] / vae.config.scaling_factor)
    decode_flops = counter.get_total_flops()
    del unet, vae
    total = steps * unet_flops + decode_flops
    print(f"FLOPs: UNet pass (batch 2) {unet_flops / 1e12:.2f} T, VAE decode "
          f"{decode_flops / 1e12:.2f} T, {steps}-step image {total / 1e12:.1f} T")  # fmt: skip
    peak = next((v for k, v in PEAK_TFLOPS.items() if scale.device == "cuda"
                 and k in torch.cuda.get_device_name()), None)  # fmt: skip
    return total / (peak * 1e12) if peak else None


# --- FLUX.1 -------------------------------------------------------------------------------------


def flux_training_rows(scale: Scale, folder: Path, work: Path) -> list:
    from training.flux_inputs import FluxTrainingInputs

    ((resolution, _),) = scale.cases
    setting = f"{resolution}² batch 1, LoRA r16"
    rows = []
    for what, options in (
        ("train: our loop", {}),
        (
            "train: our loop, int8 base + checkpointing",
            {"base_quantization": "int8", "gradient_checkpointing": True},
        ),
    ):
        inputs = FluxTrainingInputs(
            seed=0, steps=100, resolution=str(resolution), optimizer="adamw", **options
        )
        config = inputs.training_config()
        rows.append(our_training_row(scale, folder, work, config, what, setting))
    floor = flux_step_seconds(scale, folder, resolution)
    return [
        *rows,
        {**floor, "what": "train: LoRA transformer fwd + bwd (floor)", "setting": setting},
    ]


def flux_step_seconds(scale: Scale, folder: Path, resolution: int) -> dict:
    """The median bare step of a rank-16 LoRA transformer on random packed latents and text."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig

    from families import FLUX

    device = torch.device(scale.device)
    with peak_memory(scale) as peak:
        transformer = FluxTransformer2DModel.from_pretrained(
            folder, subfolder="transformer", dtype=scale.dtype
        ).to(device)
        transformer.requires_grad_(False)
        transformer.add_adapter(
            LoraConfig(r=16, lora_alpha=16, target_modules=FLUX.lora_target_modules)
        )
        trained = [p for p in transformer.parameters() if p.requires_grad]
        for p in trained:
            p.data = p.data.float()
        optimizer = torch.optim.AdamW(trained, lr=1e-4)
        side = resolution // 16  # packed: 8x VAE, then 2x2
        width = transformer.config.joint_attention_dim
        inputs = dict(
            hidden_states=torch.randn(1, side * side, 64, device=device),
            encoder_hidden_states=torch.randn(1, FLUX.max_sequence_length, width, device=device),
            pooled_projections=torch.randn(
                1, transformer.config.pooled_projection_dim, device=device
            ),
            txt_ids=torch.zeros(FLUX.max_sequence_length, 3, device=device),
            img_ids=FluxPipeline._prepare_latent_image_ids(1, side, side, device, torch.float32),
            guidance=torch.ones(1, device=device),
        )

        def one_step():
            with torch.autocast(
                device.type, dtype=scale.dtype, enabled=scale.dtype != torch.float32
            ):
                prediction = transformer(**inputs, timestep=torch.rand(1, device=device)).sample
                loss = torch.nn.functional.mse_loss(prediction.float(), inputs["hidden_states"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        seconds = median_seconds(scale, one_step, max(1, scale.timed_steps - 1))
    return {"seconds": seconds, "peak_gb": peak.gb}


def flux_generation_rows(scale: Scale, folder: Path, work: Path) -> list:
    from diffusers import FluxPipeline

    from generation.request import FluxGenerationRequest

    side, steps = scale.generation_side, scale.generation_steps
    setting = f"{side}², {steps} steps, guidance 3.5"
    settings = engine_settings(scale, folder, work)
    request = FluxGenerationRequest(prompt="a photo of a cat", aspect_ratio="custom", width=side,
                                    height=side, num_inference_steps=steps, seed=1,
                                    disable_safety_checker=True)  # fmt: skip
    with peak_memory(scale) as peak:
        ours = engine_seconds(scale, settings, request, work / "outputs")
    with peak_memory(scale) as plain_peak:
        pipe = FluxPipeline.from_pretrained(folder, dtype=scale.dtype).to(scale.device)
        pipe.set_progress_bar_config(disable=True)
        floor = flux_generation_floor_seconds(scale, pipe, side, steps)
        reference = flux_pipeline_seconds(scale, pipe, side, steps)
        del pipe
    return [
        {"what": "generate: predict_flux's engine", "setting": setting, "seconds": ours,
         "peak_gb": peak.gb, "floor": floor},
        {"what": "generate: plain FluxPipeline", "setting": setting, "seconds": reference,
         "peak_gb": plain_peak.gb, "floor": floor},
    ]  # fmt: skip


def flux_pipeline_seconds(scale: Scale, pipe, side: int, steps: int) -> float:
    def plain():
        generator = torch.Generator("cpu").manual_seed(1)
        pipe("a photo of a cat", width=side, height=side, num_inference_steps=steps,
             guidance_scale=3.5, generator=generator)  # fmt: skip

    return median_seconds(scale, plain, 2)


def flux_generation_floor_seconds(scale: Scale, pipe, side: int, steps: int) -> float | None:
    """FLOPs of `steps` transformer passes (guidance is distilled: batch 1) and one VAE decode,
    counted by torch, at the GPU's dense peak; None where no peak is known."""
    from torch.utils.flop_counter import FlopCounterMode

    from families import FLUX

    device, dtype, packed = torch.device(scale.device), scale.dtype, side // 16
    transformer = pipe.transformer
    width = transformer.config.joint_attention_dim
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        transformer(
            hidden_states=torch.randn(1, packed * packed, 64, device=device, dtype=dtype),
            encoder_hidden_states=torch.randn(
                1, FLUX.max_sequence_length, width, device=device, dtype=dtype
            ),  # fmt: skip
            pooled_projections=torch.randn(
                1, transformer.config.pooled_projection_dim, device=device, dtype=dtype
            ),  # fmt: skip
            timestep=torch.ones(1, device=device, dtype=dtype),
            txt_ids=torch.zeros(FLUX.max_sequence_length, 3, device=device, dtype=dtype),
            img_ids=pipe._prepare_latent_image_ids(1, packed, packed, device, dtype),
            guidance=torch.ones(1, device=device, dtype=dtype),
        )
    transformer_flops = counter.get_total_flops()
    with torch.no_grad(), counter:
        pipe.vae.decode(torch.randn(1, 16, side // 8, side // 8, device=device, dtype=dtype))
    decode_flops = counter.get_total_flops()
    total = steps * transformer_flops + decode_flops
    print(f"FLOPs: transformer pass {transformer_flops / 1e12:.2f} T, VAE decode "
          f"{decode_flops / 1e12:.2f} T, {steps}-step image {total / 1e12:.1f} T")  # fmt: skip
    peak = next((v for k, v in PEAK_TFLOPS.items() if scale.device == "cuda"
                 and k in torch.cuda.get_device_name()), None)  # fmt: skip
    return total / (peak * 1e12) if peak else None


# --- switching --------------------------------------------------------------------------------


def switch_rows(scale: Scale, work: Path) -> list:
    from benchmarks import bench_switch

    if scale.device == "cpu":  # the tiny UNet stands in for the real one
        from diffusers import UNet2DConditionModel

        from weights.embedded.tiny import ensure_tiny_model

        folder = ensure_tiny_model("base", work / "cache")
        unet = UNet2DConditionModel.from_pretrained(
            folder, subfolder="unet", dtype=bench_switch.DTYPE
        )
        unet = unet.requires_grad_(False).eval()
    else:
        unet = bench_switch.build_unet(scale.device)
    folder = work / "switch"
    folder.mkdir()
    with torch.no_grad():
        rows, identical = bench_switch.run(unet, folder, repeats=3)
    setting = "two rank-32 LoRAs" + ("" if identical else " (NOT identical after switches)")
    return [{"what": f"switch: {name}", "setting": setting, "seconds": s} for name, s in rows]


# --- measuring --------------------------------------------------------------------------------


class peak_memory:  # noqa: N801 (used as a context manager)
    """Peak GPU memory allocated inside the block, in GB (None on the CPU)."""

    def __init__(self, scale: Scale):
        self.cuda = scale.device == "cuda"
        self.gb = None

    def __enter__(self):
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.gb = torch.cuda.max_memory_allocated() / 2**30
        gc.collect()  # the block's models go before the next one loads
        if self.cuda:
            torch.cuda.empty_cache()
        return False


def synchronize(scale: Scale) -> None:
    if scale.device == "cuda":
        torch.cuda.synchronize()


def median_seconds(scale: Scale, action, repeats: int) -> float:
    """The median of `repeats` timed runs after one warm-up run."""
    action()
    times = []
    for _ in range(repeats):
        synchronize(scale)
        started = time.perf_counter()
        action()
        synchronize(scale)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def table(rows: list[dict]) -> str:
    lines = ["| measurement | setting | seconds | × floor | peak GB |", "|---|---|---|---|---|"]
    floors = {row["setting"]: row["seconds"] for row in rows if "(floor)" in row["what"]}
    for row in rows:
        floor = row.get("floor") or floors.get(row["setting"])
        ratio = f"{row['seconds'] / floor:.2f}" if floor and "(floor)" not in row["what"] else "–"
        peak = f"{row['peak_gb']:.1f}" if row.get("peak_gb") is not None else "–"
        lines.append(
            f"| {row['what']} | {row['setting']} | {row['seconds']:.3f} | {ratio} | {peak} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
