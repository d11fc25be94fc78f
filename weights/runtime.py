"""Device and dtype: CUDA with bf16/fp16 when present, else CPU with fp32."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype


def pick_runtime(device: str | None = None, dtype: str | None = None) -> Runtime:
    """Choose where and in which precision to run; explicit arguments override the guess."""
    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
        return Runtime(chosen, DTYPES[dtype])
    if chosen.type != "cuda":
        return Runtime(chosen, torch.float32)
    # bf16 keeps fp32's range, so SDXL's VAE and small LoRA updates do not overflow.
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return Runtime(chosen, half)
