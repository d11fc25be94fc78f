"""Device, dtype and GPU speed options: CUDA with bf16/fp16 when present, else CPU with fp32."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Opt-in GPU speed options (SDXL_TUNER_SPEED): each off by default until benchmarks/gpu/run.py
# shows it wins on a GPU; none applies on the CPU, so CPU results never change.
# - tf32: fp32 matmuls and convolutions in TF32 (the VAE runs in fp32; LoRA master weights);
# - channels_last: the UNet's convolutions in NHWC, the layout tensor cores prefer;
# - compile: training compiles the denoiser's repeated blocks (regional torch.compile: the
#   transformer blocks, so compiling stays short); the log reports its cost.
SPEED_OPTIONS = ("tf32", "channels_last", "compile")


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype
    speed: frozenset[str] = field(default_factory=frozenset)  # options in effect (CUDA only)

    def uses(self, option: str) -> bool:
        return option in self.speed


def pick_runtime(
    device: str | None = None, dtype: str | None = None, speed: tuple[str, ...] = ()
) -> Runtime:
    """Choose where and in which precision to run; explicit arguments override the guess.
    `speed`: SPEED_OPTIONS to use on a GPU (TF32 is process-wide: switched on here)."""
    unknown = sorted(set(speed) - set(SPEED_OPTIONS))
    if unknown:
        raise ValueError(f"Unknown speed options {unknown}: use {', '.join(SPEED_OPTIONS)}.")
    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    options = frozenset(speed) if chosen.type == "cuda" else frozenset()
    if "tf32" in options:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
        return Runtime(chosen, DTYPES[dtype], options)
    if chosen.type != "cuda":
        return Runtime(chosen, torch.float32)
    # bf16 keeps fp32's range, so SDXL's VAE and small LoRA updates do not overflow.
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return Runtime(chosen, half, options)
