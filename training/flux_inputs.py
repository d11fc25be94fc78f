"""The FLUX.1 container's training inputs: the names, defaults and ranges of Replicate's Flux
LoRA trainer (train_flux.py declares its Cog inputs from these fields), and how they become
this project's `TrainingConfig` and preprocessing options."""

from __future__ import annotations

from dataclasses import dataclass

from formats.input_ranges import one_of, range_problems, ranged, seed_field, text
from formats.tokens import MAX_TRIGGER_LENGTH, trigger_problems
from training.config import (
    BASE_QUANTIZATIONS,
    LORA_TYPES,
    MAX_LEARNING_RATE,
    MAX_STEPS,
    OPTIMIZERS,
    PRESETS,
    InvalidTrainingConfig,
    TrainingConfig,
    optimizer_here,
    sizes,
)
from training.hub_upload import HubUpload
from training.job import Accounts


@dataclass(frozen=True)
class FluxTrainingInputs:
    trigger_word: str = text("TOK", MAX_TRIGGER_LENGTH)
    lora_type: str = one_of("subject", LORA_TYPES)
    autocaption: bool = True
    autocaption_prefix: str | None = None  # None: the lora_type preset's
    autocaption_suffix: str | None = None
    steps: int = ranged(1000, 1, MAX_STEPS)
    learning_rate: float = ranged(4e-4, 0.0, MAX_LEARNING_RATE)
    batch_size: int = ranged(1, 1, 64)
    resolution: str = "512,768,1024"  # every image is trained at each size
    lora_rank: int = ranged(16, 1, 256)
    caption_dropout_rate: float = ranged(0.05, 0.0, 0.99)
    optimizer: str = one_of("adamw8bit", OPTIMIZERS)
    cache_latents_to_disk: bool = False  # in the run folder instead of memory
    layers_to_optimize_regex: str | None = None
    gradient_checkpointing: bool = False  # on for batch_size > 1, as Replicate's
    # Not Replicate's: the transformer's frozen weights in 8 bits (a 24 GB card fits FLUX.1-dev).
    base_quantization: str = one_of("none", BASE_QUANTIZATIONS)
    seed: int | None = seed_field()
    # The LoRA uploaded to this Hugging Face repository with this token (Cog Secret).
    hf_repo_id: str | None = None
    hf_token: str | None = None
    # A Weights & Biases run (with this key, a Cog Secret, never logged or recorded): loss,
    # the sample prompts' images every sample interval, the LoRA every save interval.
    wandb_api_key: str | None = None
    wandb_project: str = "flux_train_replicate"
    wandb_run: str | None = None
    wandb_entity: str | None = None
    wandb_sample_interval: int = ranged(100, 1, MAX_STEPS)
    wandb_sample_prompts: str | None = None  # one per line; rendered into samples/ too
    wandb_save_interval: int = ranged(100, 1, MAX_STEPS)
    # A LoRA .safetensors URL packaged as the tarball, instead of training one.
    skip_training_and_use_pretrained_hf_lora_url: str | None = None
    # Not Replicate's: checkpoints in the tarball, which `resume_from` continues from.
    checkpointing_steps: int = ranged(0, 0, 2**31 - 1)

    def training_config(self) -> TrainingConfig:
        """The training settings: a LoRA of rank = alpha on the transformer, the trigger word
        kept as a word (no new tokens), the largest resolution for the crops and the others
        as buckets, a constant learning rate."""
        problems = range_problems(self) + trigger_problems(self.trigger_word, "trigger_word")
        if problems:  # in this container's names, before they become TrainingConfig's
            raise InvalidTrainingConfig("Invalid training inputs:\n- " + "\n- ".join(problems))
        resolutions = sizes(self.resolution, "resolution")
        if not resolutions:
            raise InvalidTrainingConfig("resolution is empty: give sizes such as '512,768,1024'.")
        return TrainingConfig(
            seed=self.seed,
            resolution=resolutions[-1],
            bucket_resolutions=resolutions[:-1],
            train_batch_size=self.batch_size,
            max_train_steps=self.steps,
            lora_lr=self.learning_rate,
            lora_rank=self.lora_rank,
            ti_lr=0.0,
            lr_scheduler="constant",
            lr_warmup_steps=0,
            token_string=self.trigger_word,
            caption_prefix=self._caption_prefix(),
            optimizer=optimizer_here(self.optimizer),  # adamw8bit: Replicate's default
            caption_dropout=self.caption_dropout_rate,
            lora_layers_regex=self.layers_to_optimize_regex,
            gradient_checkpointing=self.gradient_checkpointing or self.batch_size > 1,
            lora_type=self.lora_type,
            base_quantization=self.base_quantization,
            use_masks=False,  # the whole image, as Replicate's Flux trainer trains
            cache_latents_to_disk=self.cache_latents_to_disk,
            sample_prompts=self.wandb_sample_prompts,
            sample_every=self.wandb_sample_interval,
            sample_steps=28,  # Replicate's Flux trainer's samples
            wandb_project=self.wandb_project if self.wandb_api_key else None,
            wandb_run=self.wandb_run,
            wandb_entity=self.wandb_entity,
            wandb_save_interval=self.wandb_save_interval,
            checkpointing_steps=self.checkpointing_steps,
        )

    def accounts(self) -> Accounts:
        """The W&B key and the hub upload these inputs ask for, checked before any work."""
        return Accounts(self.wandb_api_key, HubUpload.from_inputs(self.hf_repo_id, self.hf_token))

    def preprocess_options(self) -> dict:
        """PreprocessConfig fields these inputs decide (the rest come from the config)."""
        return {
            "autocaption": self.autocaption,
            "caption_suffix": self.autocaption_suffix or "",
            "aspect_buckets": True,  # Flux trains at each photo's own aspect ratio
        }

    def _caption_prefix(self) -> str:
        if self.autocaption_prefix is not None:
            return self.autocaption_prefix
        if self.autocaption_suffix:  # the suffix names the trigger: no preset prefix too
            return ""
        return PRESETS[self.lora_type].caption_prefix.format(trigger=self.trigger_word)
