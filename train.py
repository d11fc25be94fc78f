"""Cog `train()`: declares the inputs (names and defaults as Replicate's SDXL trainer, plus what
other trainers offer) and runs preprocess -> training loop -> weights tarball."""

import json
import logging
import random
import shutil
import tempfile
import time
from typing import Optional

from cog import Input, Path

from families import detect_family
from preprocess import PreprocessConfig, preprocess
from training.bundle import write_bundle, write_dry_run_report
from training.config import LORA_TYPES, LR_SCHEDULERS, OPTIMIZERS, TrainingConfig
from training.loop import run_training
from weights.base_models import diffusers_folder, resolve_model
from weights.runtime import pick_runtime
from weights.settings import ModelSettings
from weights.trained import BUNDLE_FILE

DRY_RUN_TIMED_STEPS = 3
# The summaries of preprocessing and the store are INFO logs; Cog shows what reaches stderr.
logging.basicConfig(level=logging.INFO, format="%(message)s")


def train(
    input_images: Path = Input(
        description="A .zip or .tar file containing the image files that will be used for "
        "fine-tuning"
    ),
    seed: Optional[int] = Input(
        description="Random seed for reproducible training. Leave empty to use a random seed",
        default=None,
    ),
    resolution: Optional[int] = Input(
        description="Square pixel resolution which your images will be resized to for training. "
        "Empty: the base model family's default, 768 for SDXL and 512 for SD 1.5",
        default=None,
    ),
    train_batch_size: int = Input(description="Batch size (per device) for training", default=4),
    num_train_epochs: int = Input(
        description="Number of epochs to loop through your training dataset", default=4000
    ),
    max_train_steps: Optional[int] = Input(
        description="Number of individual training steps. Takes precedence over num_train_epochs",
        default=1000,
    ),
    is_lora: bool = Input(
        description="Whether to use LoRA training. If set to False, will use Full fine tuning",
        default=True,
    ),
    unet_learning_rate: float = Input(
        description="Learning rate for the U-Net (full fine-tuning only)", default=1e-6
    ),
    ti_lr: float = Input(
        description="Scaling of learning rate for training textual inversion embeddings. "
        "0 trains no new tokens",
        default=3e-4,
    ),
    lora_lr: float = Input(
        description="Learning rate for training LoRA embeddings. 0 gives pure textual inversion",
        default=1e-4,
    ),
    lora_rank: int = Input(description="Rank of LoRA embeddings", default=32),
    lora_alpha: Optional[float] = Input(
        description="LoRA alpha (the update is scaled by alpha/rank). Empty: equal to the rank",
        default=None,
    ),
    lr_scheduler: str = Input(
        description="Learning rate scheduler to use for training ('constant' ignores warmup)",
        default="constant",
        choices=list(LR_SCHEDULERS),
    ),
    lr_warmup_steps: int = Input(
        description="Number of warmup steps for lr schedulers with warmups.", default=100
    ),
    token_string: str = Input(
        description="A unique string that will be trained to refer to the concept in the input "
        "images. Can be anything, but TOK works well",
        default="TOK",
    ),
    caption_prefix: str = Input(
        description="Text which will be used as prefix during automatic captioning. Must "
        "contain the `token_string`. For example, if caption text is 'a cat sitting', and "
        "prefix is 'a photo of TOK, ', the caption will be 'a photo of TOK, a cat sitting'",
        default="a photo of TOK, ",
    ),
    mask_target_prompts: Optional[str] = Input(
        description="Prompt that describes part of the image that you will find important. "
        "For example, if you are fine-tuning your pet, `photo of a dog` will be a good prompt. "
        "Prompt-based masking is used to focus the fine-tuning process on the important/"
        "salient parts of the image",
        default=None,
    ),
    crop_based_on_salience: bool = Input(
        description="If you want to crop the image to `target_size` based on the important "
        "parts of the image, set this to True. If you want to crop the image based on face "
        "detection, set this to False",
        default=True,
    ),
    use_face_detection_instead: bool = Input(
        description="If you want to use face detection instead of CLIPSeg for masking. For "
        "face applications, we recommend using this option.",
        default=False,
    ),
    clipseg_temperature: float = Input(
        description="How blurry you want the CLIPSeg mask to be. We recommend this value be "
        "something between `0.5` to `1.0`. If you want to have more sharp mask (but thus more "
        "errorful), you can decrease this value.",
        default=1.0,
    ),
    verbose: bool = Input(description="verbose output", default=True),
    checkpointing_steps: int = Input(
        description="Number of steps between saving checkpoints (kept in the bundle's "
        "checkpoints/). Set to a very high number or 0 to disable checkpointing",
        default=200,
    ),
    input_images_filetype: str = Input(
        description="Filetype of the input images. Can be either `zip` or `tar`. By default its "
        "`infer`, and it will be inferred from the ext of input file.",
        default="infer",
        choices=["zip", "tar", "infer"],
    ),
    optimizer: str = Input(
        description="Optimizer. adamw8bit: 8-bit AdamW, less memory (needs bitsandbytes); "
        "with prodigy use learning rates of 1.0",
        default="adamw",
        choices=list(OPTIMIZERS),
    ),
    noise_offset: float = Input(
        description="Noise offset (e.g. 0.05) helps learn very dark or bright images",
        default=0.0,
        ge=0,
    ),
    min_snr_gamma: float = Input(
        description="Min-SNR loss weighting gamma (5 is typical); 0 disables it",
        default=0.0,
        ge=0,
    ),
    max_grad_norm: float = Input(
        description="Clip gradients to this norm; 0 disables clipping", default=1.0, ge=0
    ),
    flip_augmentation: bool = Input(
        description="Also train on horizontally mirrored images (not for asymmetric subjects)",
        default=False,
    ),
    caption_dropout: float = Input(
        description="Probability of training a step with an empty caption", default=0.0, ge=0, le=1
    ),
    shuffle_tokens: bool = Input(
        description="Shuffle the comma-separated parts of each caption every step",
        default=False,
    ),
    keep_tokens: int = Input(
        description="Number of leading comma-separated caption parts kept in place when shuffling",
        default=1,
        ge=0,
    ),
    num_repeats: int = Input(
        description="How many times each image is shown per epoch", default=1, ge=1
    ),
    gradient_accumulation_steps: int = Input(
        description="Micro-batches accumulated per optimizer step", default=1, ge=1
    ),
    gradient_checkpointing: bool = Input(
        description="Trade compute for memory in the U-Net", default=False
    ),
    train_text_encoder: bool = Input(
        description="Also train a LoRA on both text encoders", default=False
    ),
    text_encoder_lr: float = Input(
        description="Learning rate of the text-encoder LoRA", default=5e-5, ge=0
    ),
    ti_frac: Optional[float] = Input(
        description="Fraction of the steps during which the token embeddings train (the "
        "pivot). Empty: 0.5 when a LoRA or the U-Net trains too, else 1",
        default=None,
    ),
    lora_type: str = Input(
        description="subject, or style: a faster LoRA rate (4e-4), the caption prefix "
        "'in the style of TOK, ' and a loss over the whole image (inputs left at default)",
        default="subject",
        choices=list(LORA_TYPES),
    ),
    sample_prompts: Optional[str] = Input(
        description="Prompts rendered with the weights being trained, one per line (use the "
        "token_string, e.g. 'a photo of TOK on the beach')",
        default=None,
    ),
    sample_negative_prompt: str = Input(description="Negative prompt for the samples", default=""),
    sample_every: int = Input(
        description="Render the samples every N steps (0: at the end only)", default=0, ge=0
    ),
    base_model: Optional[str] = Input(
        description="Base model, SDXL or SD 1.5 (told from its config): a Hugging Face repo "
        "id, a local diffusers folder or a single-file .safetensors checkpoint. Empty: the "
        "deployment's BASE_MODEL",
        default=None,
    ),
    dry_run: bool = Input(
        description="Only preprocess and report the plan (images, captions, steps, epochs, "
        "estimated training time from a few timed steps) and the preview; no training",
        default=False,
    ),
) -> Path:
    inputs = {k: v for k, v in locals().items() if k != "input_images"}

    # 1. Settings: every input checked before any work.
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    print(f"Using seed: {seed}")
    config = TrainingConfig.with_presets(
        seed=seed,
        resolution=resolution,
        train_batch_size=train_batch_size,
        num_train_epochs=num_train_epochs,
        max_train_steps=max_train_steps,
        is_lora=is_lora,
        unet_learning_rate=unet_learning_rate,
        ti_lr=ti_lr,
        lora_lr=lora_lr,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lr_scheduler=lr_scheduler,
        lr_warmup_steps=lr_warmup_steps,
        token_string=token_string,
        caption_prefix=caption_prefix,
        optimizer=optimizer,
        max_grad_norm=max_grad_norm,
        noise_offset=noise_offset,
        min_snr_gamma=min_snr_gamma,
        flip_augmentation=flip_augmentation,
        caption_dropout=caption_dropout,
        shuffle_tokens=shuffle_tokens,
        keep_tokens=keep_tokens,
        num_repeats=num_repeats,
        gradient_accumulation_steps=gradient_accumulation_steps,
        gradient_checkpointing=gradient_checkpointing,
        train_text_encoder=train_text_encoder,
        text_encoder_lr=text_encoder_lr,
        ti_frac=ti_frac,
        lora_type=lora_type,
        sample_prompts=tuple(p.strip() for p in (sample_prompts or "").splitlines() if p.strip()),
        sample_negative_prompt=sample_negative_prompt,
        sample_every=sample_every,
        checkpointing_steps=checkpointing_steps,
        verbose=verbose,
    )
    settings = ModelSettings.from_env()
    base = base_model or settings.base_model
    runtime = pick_runtime(settings.device, settings.dtype)
    work = Path(tempfile.mkdtemp(prefix="sdxl-train-"))

    try:
        # 2. The base model; its family fills the inputs left empty (resolution).
        model_folder = diffusers_folder(
            resolve_model(base, "base", settings.cache_dir),
            settings.cache_dir,
            settings.single_file_config,
        )
        family = detect_family(model_folder)
        config = config.for_family(family)
        print(f"Base model: {base} ({family.title}), training at {config.resolution}px")

        # 3. Unpack, load, caption, mask and crop the images.
        started = time.perf_counter()
        prepared = preprocess(
            PreprocessConfig(
                input_path=Path(str(input_images)),
                output_dir=work / "dataset",
                resolution=config.resolution,
                token_string=config.token_string,
                caption_prefix=config.caption_prefix,
                mask_target_prompts=mask_target_prompts,
                crop_based_on_salience=crop_based_on_salience,
                use_face_detection_instead=use_face_detection_instead,
                clipseg_temperature=clipseg_temperature,
                input_images_filetype=input_images_filetype,
            )
        )
        preprocess_seconds = time.perf_counter() - started

        # 4. Dry run: time a few steps and report the plan instead of training.
        if dry_run:
            timing = run_training(
                config,
                prepared.folder,
                model_folder,
                work / "run",
                runtime,
                timing_steps=DRY_RUN_TIMED_STEPS,
            )
            report = write_dry_run_report(
                timing, prepared, work / "dry_run.tar", preprocess_seconds
            )
            return Path(report)

        # 5. Train, then 6. write the bundle.
        result = run_training(config, prepared.folder, model_folder, work / "run", runtime)
        result.phase_seconds = {"preprocess": preprocess_seconds, **result.phase_seconds}
        bundle = write_bundle(
            result,
            work / BUNDLE_FILE,
            base,
            preview=prepared.preview,
            inputs=json.loads(json.dumps(inputs, default=str)),
        )
        print(
            "Time per phase: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.phase_seconds.items())
        )
        return Path(bundle)
    except BaseException:  # failed or canceled (Cog's CancelationException): leave nothing
        shutil.rmtree(work, ignore_errors=True)
        raise
