"""How many steps, which images in which step, and the learning rate at each step.

Every random choice of a step (batch order, flips, caption dropout, noise, timesteps) is drawn
from generators seeded by (seed, step): a run resumed from a checkpoint continues exactly as
the uninterrupted run would have, and seed 0 is as good a seed as any.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from training.config import BITSANDBYTES_OPTIMIZERS, TrainingConfig


def seeded(*numbers: int) -> int:
    """A 63-bit seed that mixes `numbers` (e.g. seed, step, process), well spread."""
    return (
        int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(2, np.uint64)[0]) >> 1
    )


@dataclass(frozen=True)
class TrainingPlan:
    """Step arithmetic: an epoch shows every image `num_repeats` times."""

    num_images: int
    global_batch_size: int  # train_batch_size x processes
    micro_batches_per_epoch: int
    accumulation: int
    max_train_steps: int  # optimizer steps, exactly
    pivot_step: int  # token embeddings train during steps [0, pivot_step)

    @classmethod
    def build(
        cls, config: TrainingConfig, bucket_sizes: list[int], num_processes: int
    ) -> TrainingPlan:
        global_batch = config.train_batch_size * num_processes
        per_epoch = sum(math.ceil(n * config.num_repeats / global_batch) for n in bucket_sizes)
        accumulation = config.gradient_accumulation_steps
        steps = config.max_train_steps or math.ceil(
            config.num_train_epochs * per_epoch / accumulation
        )
        pivot = round(steps * config.pivot_fraction) if config.trains_tokens else 0
        return cls(sum(bucket_sizes), global_batch, per_epoch, accumulation, steps, pivot)

    @property
    def epochs(self) -> int:
        return math.ceil(self.max_train_steps * self.accumulation / self.micro_batches_per_epoch)

    @property
    def effective_batch_size(self) -> int:
        return self.global_batch_size * self.accumulation

    @property
    def images_seen(self) -> int:
        return self.max_train_steps * self.effective_batch_size


def batch_order(
    buckets: list[list[int]], repeats: int, global_batch: int, seed: int, epoch: int
) -> list[list[int]]:
    """One epoch's global micro-batches: every image `repeats` times in a shuffled order, each
    batch from one bucket (one image size), a short last batch topped up from the same bucket."""
    rng = np.random.default_rng(seeded(seed, epoch, 0xBA7C4))
    batches = []
    for bucket in buckets:
        order = [bucket[i] for i in rng.permutation(len(bucket) * repeats) % len(bucket)]
        for start in range(0, len(order), global_batch):
            batch = order[start : start + global_batch]
            batches.append(batch + order[: global_batch - len(batch)])
    return [batches[i] for i in rng.permutation(len(batches))]


class BatchSchedule:
    """The global micro-batch for any step: a deterministic function of the seed."""

    def __init__(self, buckets: list[list[int]], repeats: int, global_batch: int, seed: int):
        self.args = (buckets, repeats, global_batch, seed)
        self._epochs: dict[int, list[list[int]]] = {}

    def micro_batch(self, index: int, micro_batches_per_epoch: int) -> list[int]:
        epoch, position = divmod(index, micro_batches_per_epoch)
        if epoch not in self._epochs:
            buckets, repeats, global_batch, seed = self.args
            self._epochs = {epoch: batch_order(buckets, repeats, global_batch, seed, epoch)}
        return self._epochs[epoch][position]


# --- learning rate ------------------------------------------------------------------------


def lr_multiplier(name: str, step: int, warmup: int, total: int) -> float:
    """The factor applied to each base learning rate at optimizer step `step` (0-based).
    `constant` ignores warmup, as in diffusers and Replicate's trainer; `step` halves the
    rate at 25%, 50% and 75% of the run."""
    if name == "constant":
        return 1.0
    if step < warmup:
        return (step + 1) / warmup
    if name == "constant_with_warmup":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if name == "linear":
        return max(0.0, 1.0 - progress)
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if name == "cosine_with_restarts":
        cycles = 3
        return 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0)))
    if name == "step":
        return 0.5 ** min(3, math.floor(4 * progress))
    raise ValueError(f"Unknown learning-rate scheduler {name!r}.")


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainingConfig, plan: TrainingPlan
) -> LambdaLR:
    """One scheduler for the one optimizer of the whole run. Token-embedding groups (marked
    `pivotal` by the trainer) drop to zero at the pivot; the other groups are unaffected."""

    def multiplier_for(group):
        def multiplier(step: int) -> float:
            if group.get("pivotal") and step >= plan.pivot_step:
                return 0.0
            return lr_multiplier(
                config.lr_scheduler, step, config.lr_warmup_steps, plan.max_train_steps
            )

        return multiplier

    return LambdaLR(optimizer, [multiplier_for(group) for group in optimizer.param_groups])


# --- optimizers -------------------------------------------------------------------------------


def build_optimizer(name: str, groups: list[dict], weight_decay: float, device: torch.device):
    """`groups`: torch parameter groups with `params`, `lr` and a `name` (kept for logs).
    With `prodigy` each `lr` multiplies Prodigy's own adapted step size: use 1.0."""
    if name in ("adamw", "adam"):
        # AdamW decouples the weight decay; Adam adds it to the gradient (an L2 term). Fused
        # kernels on CUDA, multi-tensor (foreach) elsewhere: one launch per group.
        fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
        adam = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return adam(groups, weight_decay=weight_decay, **fast)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, weight_decay=weight_decay, foreach=True)
    if name in BITSANDBYTES_OPTIMIZERS:
        import bitsandbytes

        optimizer_class = getattr(bitsandbytes.optim, BITSANDBYTES_OPTIMIZERS[name])
        return optimizer_class(groups, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            groups,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
            weight_decay=weight_decay,
        )
    if name == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(groups, weight_decay=weight_decay, safeguard_warmup=True)
    raise ValueError(f"Unknown optimizer {name!r}.")
