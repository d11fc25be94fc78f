"""The training settings as one typed, validated object.

`train.py` builds a `TrainingConfig` from the Cog inputs; every invalid combination fails here,
before any image is unpacked or model loaded, with a message that says what to change.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass, field, replace

from families import ModelFamily

OPTIMIZERS = ("adamw", "adamw8bit", "adafactor", "prodigy")
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "step",
)
LORA_TYPES = ("subject", "style")
NUM_TOKENS = 2  # <s0><s1>, as Replicate's SDXL trainer

# The `lora_type="style"` preset replaces these inputs when they were left at their defaults
# (Replicate's advice for styles: a faster LoRA rate and a caption that names a style).
DEFAULT_CAPTION_PREFIX = "a photo of TOK, "
DEFAULT_LORA_LR = 1e-4
STYLE_CAPTION_PREFIX = "in the style of TOK, "
STYLE_LORA_LR = 4e-4


class InvalidTrainingConfig(ValueError):
    """The inputs contradict each other or are out of range; nothing was started."""


@dataclass(frozen=True)
class TrainingConfig:
    seed: int
    # None: the base model family's training resolution (SDXL 768, SD 1.5 512); see for_family.
    resolution: int | None = None
    train_batch_size: int = 4
    num_train_epochs: int = 4000
    max_train_steps: int | None = 1000  # takes precedence over num_train_epochs
    is_lora: bool = True  # False: full fine-tune of the UNet
    unet_learning_rate: float = 1e-6  # full fine-tune only
    ti_lr: float = 3e-4  # 0: no new tokens, the trigger stays plain text
    lora_lr: float = DEFAULT_LORA_LR  # 0 (with is_lora): pure textual inversion
    lora_rank: int = 32
    lora_alpha: float | None = None  # None: equal to the rank (scale 1)
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 100
    token_string: str = "TOK"
    caption_prefix: str = DEFAULT_CAPTION_PREFIX
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0  # 0: no clipping
    noise_offset: float = 0.0
    min_snr_gamma: float = 0.0  # 0: plain MSE
    flip_augmentation: bool = False
    caption_dropout: float = 0.0
    shuffle_tokens: bool = False
    keep_tokens: int = 1  # comma-separated caption parts kept in place when shuffling
    num_repeats: int = 1
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    train_text_encoder: bool = False  # LoRA on both text encoders
    text_encoder_lr: float = 5e-5
    ti_frac: float | None = None  # None: 0.5 when LoRA/UNet trains too, else 1.0
    lora_type: str = "subject"
    sample_prompts: tuple[str, ...] = ()
    sample_negative_prompt: str = ""
    sample_every: int = 0  # 0: samples at the end only (when prompts are given)
    sample_steps: int = 25
    checkpointing_steps: int = 200  # 0 (or more than the run): no checkpoints
    use_masks: bool = True  # weight the loss by the preprocessing masks
    verbose: bool = True
    extra: dict = field(default_factory=dict)  # recorded in training_config.json only

    def __post_init__(self):
        problems = list(self._problems())
        if problems:
            raise InvalidTrainingConfig("Invalid training inputs:\n- " + "\n- ".join(problems))

    @classmethod
    def with_presets(cls, **inputs) -> TrainingConfig:
        """Build the config, applying the `lora_type="style"` preset to inputs left at default."""
        config = cls(**inputs)
        if config.lora_type != "style":
            return config
        return replace(
            config,
            caption_prefix=STYLE_CAPTION_PREFIX
            if config.caption_prefix == DEFAULT_CAPTION_PREFIX
            else config.caption_prefix,
            lora_lr=STYLE_LORA_LR if config.lora_lr == DEFAULT_LORA_LR else config.lora_lr,
            use_masks=False,  # a style lives in the whole picture
        )

    def for_family(self, family: ModelFamily) -> TrainingConfig:
        """The config with the inputs left to the base model's family filled in."""
        if self.resolution is not None:
            return self
        return replace(self, resolution=family.training_resolution)

    # --- what trains ----------------------------------------------------------------------

    @property
    def trains_tokens(self) -> bool:
        return self.ti_lr > 0

    @property
    def trains_unet_lora(self) -> bool:
        return self.is_lora and self.lora_lr > 0

    @property
    def trains_full_unet(self) -> bool:
        return not self.is_lora

    @property
    def trains_unet(self) -> bool:
        return self.trains_unet_lora or self.trains_full_unet

    @property
    def pivot_fraction(self) -> float:
        """Fraction of the steps during which the token embeddings train."""
        if self.ti_frac is not None:
            return self.ti_frac
        return 0.5 if (self.trains_unet or self.train_text_encoder) else 1.0

    @property
    def effective_lora_alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.lora_rank)

    @property
    def mode(self) -> str:
        if self.trains_full_unet:
            return "full fine-tune" + (" + textual inversion" if self.trains_tokens else "")
        if not self.trains_unet_lora and not self.train_text_encoder:
            return "textual inversion"
        return "LoRA" + (" + pivotal tuning" if self.trains_tokens else "")

    def to_json(self) -> dict:
        return asdict(self)

    # --- validation -----------------------------------------------------------------------

    def _problems(self):
        if self.resolution is not None and (self.resolution < 64 or self.resolution % 64):
            yield f"resolution={self.resolution}: use a multiple of 64 (e.g. 768 or 1024)."
        for name in ("train_batch_size", "num_train_epochs", "num_repeats"):
            if getattr(self, name) < 1:
                yield f"{name}={getattr(self, name)}: must be at least 1."
        if self.gradient_accumulation_steps < 1:
            yield "gradient_accumulation_steps must be at least 1."
        if self.max_train_steps is not None and self.max_train_steps < 1:
            yield f"max_train_steps={self.max_train_steps}: must be at least 1 (or unset)."
        for name in ("unet_learning_rate", "ti_lr", "lora_lr", "text_encoder_lr"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                yield f"{name}={value}: learning rates must be finite and >= 0."
        if self.lora_rank < 1:
            yield f"lora_rank={self.lora_rank}: must be at least 1."
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            yield f"lora_alpha={self.lora_alpha}: must be positive (or unset for alpha = rank)."
        if self.lr_scheduler not in LR_SCHEDULERS:
            yield f"lr_scheduler={self.lr_scheduler!r}: use one of {', '.join(LR_SCHEDULERS)}."
        if self.optimizer not in OPTIMIZERS:
            yield f"optimizer={self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}."
        elif self.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
            yield (
                "optimizer='adamw8bit' needs bitsandbytes (`pip install bitsandbytes==0.50.2`, "
                "or add it to requirements.txt before `cog build`): use adamw or adafactor."
            )
        if self.lora_type not in LORA_TYPES:
            yield f"lora_type={self.lora_type!r}: use one of {', '.join(LORA_TYPES)}."
        if self.lr_warmup_steps < 0:
            yield "lr_warmup_steps must be >= 0."
        if not self.token_string.strip() or any(c.isspace() for c in self.token_string):
            yield f"token_string={self.token_string!r}: use one word without spaces, e.g. TOK."
        if self.train_text_encoder and not self.is_lora:
            yield "train_text_encoder trains a text-encoder LoRA: it needs is_lora=true."
        if self.train_text_encoder and self.text_encoder_lr <= 0:
            yield "train_text_encoder=true needs text_encoder_lr > 0."
        if not self.is_lora and self.unet_learning_rate <= 0:
            yield "is_lora=false (full fine-tune) needs unet_learning_rate > 0."
        if not (self.trains_tokens or self.trains_unet or self.train_text_encoder):
            yield "Nothing would train: set ti_lr > 0, lora_lr > 0, or is_lora=false."
        if self.ti_frac is not None:
            if not 0 < self.ti_frac <= 1:
                yield f"ti_frac={self.ti_frac}: must be in (0, 1]."
            elif not self.trains_tokens:
                yield "ti_frac is set but ti_lr=0: no token embeddings train."
            elif self.ti_frac < 1 and not (self.trains_unet or self.train_text_encoder):
                yield (
                    f"ti_frac={self.ti_frac} with pure textual inversion: nothing would train "
                    "after the pivot. Use ti_frac=1 or train a LoRA too."
                )
        if self.max_grad_norm < 0 or self.noise_offset < 0 or self.min_snr_gamma < 0:
            yield "max_grad_norm, noise_offset and min_snr_gamma must be >= 0."
        if not 0 <= self.caption_dropout < 1:
            yield f"caption_dropout={self.caption_dropout}: must be in [0, 1)."
        if self.keep_tokens < 0:
            yield "keep_tokens must be >= 0."
        if self.sample_every < 0 or self.checkpointing_steps < 0 or self.sample_steps < 1:
            yield "sample_every and checkpointing_steps must be >= 0, sample_steps >= 1."
