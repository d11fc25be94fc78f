"""Training throughput, peak memory and time per phase, on the tiny model and on a "bench"
model: SDXL's architecture at ~52 M UNet parameters, sized so figures compare with other
trainers' CPU figures (diffusers' advanced SDXL DreamBooth-LoRA example trains it at
about 1.9 steps/s, 1.6 GB peak, on 2 CPU cores, fp32, 256², batch 2, rank 16, 20 steps,
LoRA + two TI tokens, latents cached).

    .venv/bin/python benchmarks/bench_train.py            # both models, prints a table
    .venv/bin/python benchmarks/bench_train.py --models bench --steps 40

Each case runs in its own process, so peak memory (max RSS) is the case's own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BENCH_TIME_EMBED_DIM = 32
BENCH_TEXT_DIMS = (128, 256)
BENCH_PROJECTION_DIM = 256
CASES = {
    # model, resolution
    "tiny": ("tiny", 64),
    "bench": ("bench", 256),
}


def build_bench_pipeline():
    """SDXL's classes at benchmark size (see the module docstring), random-initialised."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from families.sdxl.tiny import SDXL_SCHEDULER
    from families.tiny_parts import VOCAB_SIZE, build_tokenizer

    torch.manual_seed(0)

    def text_encoder(index, model_class):
        hidden = BENCH_TEXT_DIMS[index]
        config = CLIPTextConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=BENCH_PROJECTION_DIM,
            hidden_act="quick_gelu" if index == 0 else "gelu",
            bos_token_id=VOCAB_SIZE - 2,
            eos_token_id=VOCAB_SIZE - 1,
            pad_token_id=0 if index == 1 else VOCAB_SIZE - 1,
        )
        return model_class(config)

    unet = UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(64, 128, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 4),
        attention_head_dim=(1, 2, 4),
        norm_num_groups=32,
        use_linear_projection=True,
        cross_attention_dim=sum(BENCH_TEXT_DIMS),
        addition_embed_type="text_time",
        addition_time_embed_dim=BENCH_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * BENCH_TIME_EMBED_DIM + BENCH_PROJECTION_DIM,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64, 128, 128),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=256,
        scaling_factor=0.13025,
        force_upcast=True,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder(0, CLIPTextModel),
        text_encoder_2=text_encoder(1, CLIPTextModelWithProjection),
        tokenizer=build_tokenizer(pad_token="<|endoftext|>"),
        tokenizer_2=build_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
    )


def model_folder(name: str, cache: Path) -> Path:
    from weights.embedded.tiny import ensure_tiny_model

    if name == "tiny":
        return ensure_tiny_model("base", cache)
    folder = cache / "bench-sdxl-v1"
    if not (folder / "model_index.json").exists():
        build_bench_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


def unet_floor_seconds(folder: Path, config) -> tuple[float, int]:
    """The median time of a bare forward + backward of the LoRA UNet at the same batch and
    size: what a step cannot go below. The ratio to it is the trainer's own overhead, a
    figure that holds even on a machine whose load changes the absolute times."""
    import torch
    from diffusers import UNet2DConditionModel

    from families import SDXL
    from training.components import add_lora

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    parameters = sum(p.numel() for p in unet.parameters())
    unet.requires_grad_(False)
    add_lora(
        unet,
        config.lora_rank,
        config.effective_lora_alpha,
        SDXL.lora_target_modules,
        config.lora_method,
    )
    batch, side = config.train_batch_size, config.resolution // 8
    latents = torch.randn(batch, 4, side, side)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim)
    pooled_dim = unet.config.projection_class_embeddings_input_dim
    pooled = torch.randn(batch, pooled_dim - 6 * unet.config.addition_time_embed_dim)
    time_ids = torch.tensor([[config.resolution] * 2 + [0, 0] + [config.resolution] * 2] * batch)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        prediction = unet(
            latents,
            torch.tensor([500] * batch),
            text,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.float()},
        ).sample
        prediction.pow(2).mean().backward()
        times.append(time.perf_counter() - started)
    return sorted(times[1:])[len(times[1:]) // 2], parameters


def run_case(case: str, steps: int, cache: Path) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from train_helpers import make_dataset  # the tests' synthetic subject

    from training.config import TrainingConfig
    from training.loop import run_training
    from weights.runtime import pick_runtime

    model, resolution = CASES[case]
    started = time.perf_counter()
    folder = model_folder(model, cache)
    build_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp) / "dataset", count=4, size=resolution)
        config = TrainingConfig(
            seed=0,
            resolution=resolution,
            train_batch_size=2,
            max_train_steps=steps,
            lora_rank=16,
            lr_warmup_steps=0,
            min_snr_gamma=5.0,
            checkpointing_steps=0,
            verbose=False,
        )
        result = run_training(config, dataset, folder, Path(tmp) / "work", pick_runtime("cpu"))
    floor, unet_parameters = unet_floor_seconds(folder, config)
    training = result.phase_seconds["training"]
    return {
        "case": f"{case} ({resolution}²)",
        "unet_params_M": round(unet_parameters / 1e6, 1),
        "threads": torch.get_num_threads(),
        "steps_per_s": round(steps / training, 2),
        "images_per_s": round(steps * config.train_batch_size / training, 2),
        "median_step_s": round(result.seconds_per_step, 3),
        "unet_fwd_bwd_s": round(floor, 3),
        "loop_overhead": f"{result.seconds_per_step / floor - 1:+.0%}",
        "peak_rss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "build_s": round(build_seconds, 1),
        **{f"{k.replace(' ', '_')}_s": round(v, 2) for k, v in result.phase_seconds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench-cache")
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="torch threads")
    parser.add_argument("--one", choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(args.threads[0])
        print(json.dumps(run_case(args.one, args.steps, args.cache)))
        return
    rows = []
    for case, threads in [(c, t) for c in args.models for t in args.threads]:
        command = [sys.executable, __file__, "--one", case, "--steps", str(args.steps)]
        command += ["--threads", str(threads)]
        output = subprocess.run(
            [*command, "--cache", str(args.cache)], capture_output=True, text=True, check=True
        ).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    columns = list(dict.fromkeys(k for row in rows for k in row))
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")


if __name__ == "__main__":
    main()
