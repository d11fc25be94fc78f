"""What a run trains: the adapters it adds (or the whole denoiser it unfreezes), and the one
optimizer's parameter groups, each named for the logs. One group per trained model; LoRA+'s B
matrices in a group of their own at the higher rate; the new tokens' embedding tables in a
`pivotal` group, whose rate the scheduler drops to zero at the pivot (training/schedule.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from formats.tokens import TokenEmbeddingsHandler
from training.components import TrainingComponents, add_lora, lora_targets
from training.config import TrainingConfig


@dataclass(frozen=True)
class TrainedModel:
    """A model whose parameters train, with its group's name and learning rate."""

    group: str  # `unet_lora`, `transformer`, `text_encoder_2_lora`, ...
    model: torch.nn.Module
    lr: float


def add_adapters(models: TrainingComponents, config: TrainingConfig) -> list[TrainedModel]:
    """Attach the adapters `config` asks for, or unfreeze the whole denoiser; the models that
    now train, the denoiser first."""
    family, denoiser = models.family, models.denoiser
    trained = []
    if config.trains_unet_lora:
        targets = family.lora_target_modules
        if config.lora_layers_regex:
            targets = lora_targets(denoiser, family.denoiser, config.lora_layers_regex)
        add_lora(
            denoiser, config.lora_rank, config.effective_lora_alpha, targets, config.lora_method
        )
        trained.append(TrainedModel(f"{family.denoiser}_lora", denoiser, config.lora_lr))
    if config.trains_full_unet:
        denoiser.requires_grad_(True)
        trained.append(TrainedModel(family.denoiser, denoiser, config.unet_learning_rate))
    if config.train_text_encoder:
        for name, encoder in models.named_text_encoders().items():
            add_lora(
                encoder,
                config.lora_rank,
                config.effective_lora_alpha,
                family.text_encoder_lora_target_modules,
                config.lora_method,
            )
            trained.append(TrainedModel(f"{name}_lora", encoder, config.text_encoder_lr))
    return trained


def parameter_groups(
    trained: list[TrainedModel],
    models: TrainingComponents,
    config: TrainingConfig,
    handler: TokenEmbeddingsHandler | None,
) -> list[dict]:
    """The optimizer's groups (`name`, `lr`, `params`; `pivotal` for the token tables)."""
    groups = []
    for entry in trained:
        params = {
            n: p
            for n, p in entry.model.named_parameters()
            if p.requires_grad and not is_token_table(p, models)
        }
        faster = {n for n in params if ".lora_B." in n} if config.lora_plus_ratio != 1 else set()
        groups.append(
            {
                "name": entry.group,
                "lr": entry.lr,
                "params": [p for n, p in params.items() if n not in faster],
            }
        )
        if faster:  # LoRA+: the B matrices in a group of their own, at the higher rate
            groups.append(
                {
                    "name": f"{entry.group}_B",
                    "lr": entry.lr * config.lora_plus_ratio,
                    # In the model's order: a set's order of names changes with each
                    # process's string hashing, and a checkpoint's optimizer state is by position.
                    "params": [p for n, p in params.items() if n in faster],
                }
            )
    if handler is not None:
        tables = [e.get_input_embeddings().weight for e in models.text_encoders]
        groups.append(
            {"name": "token_embeddings", "lr": config.ti_lr, "params": tables, "pivotal": True}
        )
    return groups


def is_token_table(parameter: torch.Tensor, models: TrainingComponents) -> bool:
    """Whether `parameter` is a text encoder's token embedding table (trained as new tokens,
    with rows put back after each step, so never in a model's group nor in the average)."""
    return any(parameter is e.get_input_embeddings().weight for e in models.text_encoders)
