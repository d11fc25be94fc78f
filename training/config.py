"""The training settings as one typed, validated object.

`train.py` builds a `TrainingConfig` from the Cog inputs (and declares those inputs from its
fields); every invalid combination fails here, before any image is unpacked or model loaded,
with a message that says what to change.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import asdict, dataclass, field

from families import ModelFamily
from formats.input_ranges import one_of, random_seed, range_problems, ranged, seed_field, text
from formats.tokens import MAX_TRIGGER_LENGTH, trigger_problems

# Replicate's Flux trainer's optimizers (training/schedule.py builds each).
OPTIMIZERS = (
    "adamw",
    "adamw8bit",
    "adam",
    "adam8bit",
    "lion",
    "lion8bit",
    "adagrad",
    "adafactor",
    "prodigy",
)
# Those bitsandbytes provides, with their class in `bitsandbytes.optim` (torch has no Lion).
BITSANDBYTES_OPTIMIZERS = {
    "adamw8bit": "AdamW8bit",
    "adam8bit": "Adam8bit",
    "lion": "Lion",
    "lion8bit": "Lion8bit",
}
# The 8-bit ones and the same algorithm with 32-bit states, which trains alike: the 8-bit
# states only save memory.
EIGHT_BIT_OPTIMIZERS = {"adamw8bit": "adamw", "adam8bit": "adam", "lion8bit": "lion"}
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "step",
)
LORA_TYPES = ("subject", "style")
# How the LoRA's update is shaped: plain low-rank, DoRA (low-rank direction plus a trained
# magnitude per output row), LoKr (a Kronecker product of two small factors).
LORA_METHODS = ("lora", "dora", "lokr")
BASE_QUANTIZATIONS = ("none", "int8")
NUM_TOKENS = 2  # <s0><s1>, as Replicate's SDXL trainer
MAX_STEPS = 100_000
# Every learning rate's upper bound. Prodigy's rates multiply its own adapted step size (1.0 is
# its advice); the Adam family diverges above about 1e-2. 10 refuses only what cannot train
# (1e308 would overflow the first update) and leaves Prodigy's users room.
MAX_LEARNING_RATE = 10.0

# The inputs that set how the LoRA learns. A LoRA request that leaves every one of them empty
# trains with its preset's recipe (measured over training seeds in docs/quality.md); one that
# sets any of them gets Replicate's SDXL trainer's values for the others, so a Replicate
# client's request trains exactly as it asked.
LEARNING_INPUTS = (
    "optimizer",
    "lora_lr",
    "ti_lr",
    "lora_rank",
    "lr_scheduler",
    "lr_warmup_steps",
    "min_snr_gamma",
    "ema_decay",
)
REPLICATE_LEARNING = {
    "optimizer": "adamw",
    "ti_lr": 3e-4,
    "lora_rank": 32,
    "lr_scheduler": "constant",
    "lr_warmup_steps": 100,
    "min_snr_gamma": 0.0,
    "ema_decay": 0.0,
}


@dataclass(frozen=True)
class Preset:
    """What a `lora_type` gives the inputs a request left empty."""

    caption_prefix: str  # `{trigger}`: the token_string
    use_masks: bool  # weight the loss by the preprocessing masks
    replicate_lora_lr: float  # with Replicate's other learning inputs
    # Every learning input, for a LoRA request that sets none of them; None: Replicate's.
    recipe: dict | None = None

    def learning(self, asked: dict, is_lora: bool) -> dict:
        """The learning inputs to train with, given those a request `asked` (None: empty)."""
        if self.recipe and is_lora and all(value is None for value in asked.values()):
            return dict(self.recipe)
        replicate = {**REPLICATE_LEARNING, "lora_lr": self.replicate_lora_lr}
        return {name: replicate[name] if value is None else value for name, value in asked.items()}


# Replicate's advice for styles: a faster LoRA rate and a caption that names a style.
PRESETS = {
    "subject": Preset(
        caption_prefix="a photo of {trigger}, ",
        use_masks=True,
        replicate_lora_lr=1e-4,
        # Learns the subject on every training seed of the toy benchmark: 0.63, worst 0.59,
        # against Replicate's 0.24, worst 0.00 (docs/quality.md#the-defaults).
        recipe=dict(
            optimizer="prodigy",
            lora_lr=1.0,
            ti_lr=1.0,
            lora_rank=8,
            lr_scheduler="cosine",
            lr_warmup_steps=0,
            min_snr_gamma=5.0,
            ema_decay=0.98,
        ),
    ),
    # A style lives in the whole picture: no subject masks.
    "style": Preset(
        caption_prefix="in the style of {trigger}, ",
        use_masks=False,
        replicate_lora_lr=4e-4,  # no recipe measured beats Replicate's yet (docs/quality.md)
    ),
}


class InvalidTrainingConfig(ValueError):
    """The inputs contradict each other or are out of range; nothing was started."""


@dataclass(frozen=True)
class TrainingConfig:
    """Every training setting with its default and range (train.py declares its Cog inputs
    from these fields). Fields left None are filled when the config is made: `seed` at
    random; `caption_prefix`, `use_masks` and the learning inputs (LEARNING_INPUTS) from the
    `lora_type` preset."""

    seed: int | None = seed_field()
    resolution: int = ranged(768, 64, 2048)  # Replicate's default
    # Smaller sizes every image is also trained at (multi-resolution buckets, as Replicate's
    # Flux trainer's "512,768,1024"); a comma list or a tuple, stored as a sorted tuple.
    bucket_resolutions: str | tuple[int, ...] | None = None
    train_batch_size: int = ranged(4, 1, 64)
    num_train_epochs: int = ranged(4000, 1, MAX_STEPS)
    max_train_steps: int | None = ranged(1000, 1, MAX_STEPS)  # takes precedence over epochs
    is_lora: bool = True  # False: full fine-tune of the UNet
    unet_learning_rate: float = ranged(1e-6, 0.0, MAX_LEARNING_RATE)  # full fine-tune only
    # 0: no new tokens, the trigger stays plain text
    ti_lr: float | None = ranged(None, 0.0, MAX_LEARNING_RATE)
    # 0 (with is_lora): pure textual inversion
    lora_lr: float | None = ranged(None, 0.0, MAX_LEARNING_RATE)
    lora_rank: int | None = ranged(None, 1, 256)
    lora_alpha: float | None = ranged(None, 0.0, 4096.0)  # None: equal to the rank (scale 1)
    # LoRA+ (Hayou et al., 2024): the B matrices learn this many times faster than the A
    # matrices (B starts at zero and carries the update's size); 1: one rate for both.
    lora_plus_ratio: float = ranged(1.0, 1.0, 64.0)
    # How the denoiser's (and text encoders') adapter is shaped (LORA_METHODS).
    lora_method: str = one_of("lora", LORA_METHODS)
    # A regular expression searched in the denoiser's module names (`transformer.…` /
    # `unet.…`): its linear layers that match are the ones LoRA trains. None: the family's.
    lora_layers_regex: str | None = None
    # "int8": the frozen denoiser's linear weights held in 8 bits (torchao, weight-only) while
    # a LoRA trains on top: half of bf16's memory (FLUX.1-dev's transformer 12 GB, not 24).
    base_quantization: str = one_of("none", BASE_QUANTIZATIONS)
    lr_scheduler: str | None = one_of(None, LR_SCHEDULERS)
    lr_warmup_steps: int | None = ranged(None, 0, MAX_STEPS)
    token_string: str = text("TOK", MAX_TRIGGER_LENGTH)
    # A word the new tokens start from (each its tokens' mean embedding), e.g. the subject's
    # class ("dog"); None: random vectors at the vocabulary's scale.
    token_init_word: str | None = None
    caption_prefix: str | None = None
    optimizer: str | None = one_of(None, OPTIMIZERS)
    # AdamW's decoupled decay shrinks each weight by lr x weight_decay per step: above 1 it
    # would flip signs at a learning rate of 1.
    weight_decay: float = ranged(1e-4, 0.0, 1.0)
    # 0: no clipping. Gradient norms of these runs are of order 1-10; a bound of 1000 never
    # clips, so nothing larger is useful.
    max_grad_norm: float = ranged(1.0, 0.0, 1000.0)
    # The saved weights are an exponential moving average of the trained ones (training/ema.py)
    # with this decay; 0: the last step's weights.
    ema_decay: float | None = ranged(None, 0.0, 0.9999)
    noise_offset: float = ranged(0.0, 0.0, 1.0)
    # 0: plain MSE. 5 is the paper's; the least-noised timestep of SD's schedules has an SNR
    # of about 1,200, so a gamma of 1000 already weights nearly every timestep as plain MSE.
    min_snr_gamma: float | None = ranged(None, 0.0, 1000.0)
    flip_augmentation: bool = False
    # The encoded images in the run folder (safetensors files, read back per batch) instead of
    # in memory: for sets whose latents would not fit. The same training, bit for bit.
    cache_latents_to_disk: bool = False
    caption_dropout: float = ranged(0.0, 0.0, 0.99)  # 1 would never show the trigger
    shuffle_tokens: bool = False
    keep_tokens: int = ranged(1, 0, 100)  # comma-separated caption parts kept in place
    num_repeats: int = ranged(1, 1, 1000)
    gradient_accumulation_steps: int = ranged(1, 1, 256)
    gradient_checkpointing: bool = False
    train_text_encoder: bool = False  # LoRA on both text encoders
    text_encoder_lr: float = ranged(5e-5, 0.0, MAX_LEARNING_RATE)
    ti_frac: float | None = ranged(None, 0.0, 1.0)  # None: 0.5 when LoRA/UNet trains, else 1
    lora_type: str = one_of("subject", LORA_TYPES)
    # One prompt per line (as the Cog input gives them) or a tuple; stored as a tuple.
    sample_prompts: str | tuple[str, ...] | None = None
    sample_negative_prompt: str = ""
    sample_every: int = ranged(0, 0, MAX_STEPS)  # 0: samples at the end only (with prompts)
    sample_steps: int = ranged(25, 1, 500)
    # Prior preservation: images of the class prompts drawn by the base model before training,
    # trained on beside the subject so the LoRA keeps drawing what the base drew for them.
    class_prompt: str | tuple[str, ...] | None = None  # one prompt per line
    num_class_images: int = ranged(0, 0, 1000)  # 0: no prior preservation
    # DreamBooth's 1 weighs class and subject images alike; at 10 the class images already
    # outweigh the subject tenfold and it barely trains.
    prior_loss_weight: float = ranged(1.0, 0.0, 10.0)
    # Steps between checkpoints, kept in the bundle's checkpoints/; 0, or any number at least
    # the run's steps: none, so the tarball holds the final weights only. Replicate's SDXL
    # clients send 999999 ("a very high number to disable"): up to the largest 32-bit integer.
    checkpointing_steps: int = ranged(0, 0, 2**31 - 1)
    use_masks: bool | None = None  # weight the loss by the preprocessing masks
    # A Weights & Biases run (training/tracking.py): loss, samples, settings, and the LoRA every
    # `wandb_save_interval` steps (0: at the end only). No project: no run.
    wandb_project: str | None = None
    wandb_run: str | None = None
    wandb_entity: str | None = None
    wandb_save_interval: int = ranged(0, 0, MAX_STEPS)
    verbose: bool = True
    extra: dict = field(default_factory=dict)  # recorded in training_config.json only

    def __post_init__(self):
        preset = PRESETS.get(self.lora_type, PRESETS["subject"])
        asked = {name: getattr(self, name) for name in LEARNING_INPUTS}
        filled = {
            "seed": random_seed() if self.seed is None else self.seed,
            "caption_prefix": preset.caption_prefix.format(trigger=self.token_string)
            if self.caption_prefix is None
            else self.caption_prefix,
            **preset.learning(asked, self.is_lora),
            "use_masks": preset.use_masks if self.use_masks is None else self.use_masks,
            "sample_prompts": _prompts(self.sample_prompts),
            "bucket_resolutions": sizes(self.bucket_resolutions, "bucket_resolutions"),
            "class_prompt": _prompts(self.class_prompt),
        }
        for name, value in filled.items():
            object.__setattr__(self, name, value)  # frozen: filled once, here
        problems = range_problems(self) + list(self._problems())
        if problems:
            raise InvalidTrainingConfig("Invalid training inputs:\n- " + "\n- ".join(problems))

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

    @property
    def learning(self) -> str:
        """The learning inputs as this run trains with them, and where they came from."""
        learning = {name: getattr(self, name) for name in LEARNING_INPUTS}
        values = " ".join(
            f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
            for name, value in learning.items()
        )
        recipe = PRESETS.get(self.lora_type, PRESETS["subject"]).recipe
        if recipe and learning == recipe:
            return f"{values} (the {self.lora_type} recipe: no learning input was set)"
        return values

    def method_advice(self, family: ModelFamily) -> str | None:
        """Why this run may not learn its subject, when it trains a LoRA alone or the tokens
        alone on a family that can train both: in the toy benchmark neither learns a subject
        under a trigger, in this trainer or in diffusers' own (docs/quality.md)."""
        if self.lora_type != "subject" or not family.trains_tokens or self.trains_full_unet:
            return None
        if self.mode == "LoRA":
            return (
                "ti_lr=0 trains a LoRA alone: it learns what every caption shares (a look, a "
                "style) but rarely a subject under a trigger word. For a subject, train new "
                "tokens too (leave ti_lr empty or set it > 0: LoRA + pivotal tuning)."
            )
        if self.mode == "textual inversion":
            return (
                "lora_lr=0 trains the tokens alone: they choose among what the model already "
                "draws and cannot teach it a new subject. For a subject, train a LoRA too "
                "(leave lora_lr empty or set it > 0: LoRA + pivotal tuning)."
            )
        return None

    def _trained_rates(self) -> dict[str, float]:
        """The learning rate of each group of parameters this config trains."""
        rates = {
            "lora_lr": self.lora_lr if self.trains_unet_lora else None,
            "unet_learning_rate": self.unet_learning_rate if self.trains_full_unet else None,
            "ti_lr": self.ti_lr if self.trains_tokens else None,
            "text_encoder_lr": self.text_encoder_lr if self.train_text_encoder else None,
        }
        return {name: rate for name, rate in rates.items() if rate is not None}

    def to_json(self) -> dict:
        return asdict(self)

    # --- validation -----------------------------------------------------------------------

    def check_family(self, family: ModelFamily) -> None:
        """Raise when this config asks what the base model's family cannot train."""
        problems = family.training_problems(self)
        if problems:
            raise InvalidTrainingConfig("Invalid training inputs:\n- " + "\n- ".join(problems))

    def _problems(self):
        if self.resolution % 64:
            yield f"resolution={self.resolution}: use a multiple of 64 (e.g. 768 or 1024)."
        for size in self.bucket_resolutions:
            if size % 64 or not 64 <= size < self.resolution:
                yield (
                    f"bucket_resolutions has {size}: each must be a multiple of 64, at least 64 "
                    f"and below resolution={self.resolution}."
                )
        if self.lora_layers_regex is not None:
            try:
                re.compile(self.lora_layers_regex)
            except re.error as error:
                pattern = self.lora_layers_regex
                yield f"lora_layers_regex={pattern!r}: not a regular expression ({error})."
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            yield f"lora_alpha={self.lora_alpha}: must be positive (or unset for alpha = rank)."
        if not optimizer_available(self.optimizer):
            yield (
                f"optimizer={self.optimizer!r} needs bitsandbytes, which the Cog image installs "
                "(cog.yaml) but this environment lacks (`pip install bitsandbytes==0.50.2`): "
                "use adamw, adam, adagrad or adafactor."
            )
        if self.optimizer == "prodigy" and len(set(self._trained_rates().values())) > 1:
            rates = ", ".join(f"{k}={v:g}" for k, v in self._trained_rates().items())
            yield (
                f"optimizer='prodigy' adapts one step size for every trained group, so their "
                f"learning rates must be equal ({rates}): set them all to 1.0."
            )
        if self.num_class_images and not self.class_prompt:
            yield "num_class_images > 0 needs a class_prompt, e.g. 'a photo of a dog'."
        yield from trigger_problems(self.token_string, "token_string")
        if self.base_quantization != "none" and not self.is_lora:
            yield (
                f"base_quantization={self.base_quantization!r} freezes the base weights in 8 "
                "bits: it trains a LoRA (is_lora=true), not a full fine-tune."
            )
        yield from self._method_problems()
        if self.train_text_encoder and not self.is_lora:
            yield "train_text_encoder trains a text-encoder LoRA: it needs is_lora=true."
        if self.train_text_encoder and self.text_encoder_lr <= 0:
            yield "train_text_encoder=true needs text_encoder_lr > 0."
        if not self.is_lora and self.unet_learning_rate <= 0:
            yield "is_lora=false (full fine-tune) needs unet_learning_rate > 0."
        if not (self.trains_tokens or self.trains_unet or self.train_text_encoder):
            yield "Nothing would train: set ti_lr > 0, lora_lr > 0, or is_lora=false."
        if self.ti_frac is not None:
            if self.ti_frac == 0:
                yield "ti_frac=0: must be in (0, 1] (leave it empty for the default)."
            elif not self.trains_tokens:
                yield "ti_frac is set but ti_lr=0: no token embeddings train."
            elif self.ti_frac < 1 and not (self.trains_unet or self.train_text_encoder):
                yield (
                    f"ti_frac={self.ti_frac} with pure textual inversion: nothing would train "
                    "after the pivot. Use ti_frac=1 or train a LoRA too."
                )

    def _method_problems(self):
        if self.lora_method == "lora":
            return
        method = f"lora_method={self.lora_method!r}"
        if not self.is_lora:
            yield (
                f"{method} shapes a LoRA, but is_lora=false trains the whole UNet: set "
                "lora_method='lora' or is_lora=true."
            )
        if self.base_quantization != "none":
            yield f"{method} trains on full-precision weights: set base_quantization='none'."
        if self.lora_method == "lokr" and self.lora_plus_ratio != 1:
            yield f"{method} has no B matrices for LoRA+ to speed up: set lora_plus_ratio=1."


def optimizer_available(name: str) -> bool:
    return (
        name not in BITSANDBYTES_OPTIMIZERS or importlib.util.find_spec("bitsandbytes") is not None
    )


def optimizer_here(name: str) -> str:
    """`name`, or where it is an 8-bit optimizer and bitsandbytes is absent (a CPU setup), the
    same algorithm with 32-bit states when torch has it, saying so."""
    substitute = EIGHT_BIT_OPTIMIZERS.get(name)
    if optimizer_available(name) or substitute is None or not optimizer_available(substitute):
        return name
    print(f"optimizer {name} needs bitsandbytes, absent here: training with {substitute}.")
    return substitute


def parse_settings(pairs: list[str]) -> dict:
    """`FIELD=VALUE` pairs (the command line's `--set`) as a dict; values parsed as JSON when
    they parse (`lora_rank=16` is a number, `token_string=sks` a string)."""
    settings = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def sizes(value: str | tuple[int, ...] | None, name: str) -> tuple[int, ...]:
    """Sizes from a comma list ("512, 768") or a sequence, sorted, without repeats; `name`:
    the input's, for the message."""
    if value is None:
        return ()
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if not all(part.isdigit() for part in parts):
            raise InvalidTrainingConfig(
                f"{name}={value!r}: use whole numbers separated by commas, e.g. '512,768'."
            )
        value = tuple(int(part) for part in parts)
    return tuple(sorted(set(value)))


def _prompts(prompts: str | tuple[str, ...] | None) -> tuple[str, ...]:
    """Prompts one per line (as a Cog input gives them) or as a sequence, without blank ones."""
    if prompts is None:
        return ()
    lines = prompts.splitlines() if isinstance(prompts, str) else prompts
    return tuple(line.strip() for line in lines if line.strip())
