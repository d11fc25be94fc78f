"""Cog `train()`: declares the inputs (names and defaults as Replicate's SDXL trainer, plus what
other trainers offer; each default and range lives on its configuration field), checks them,
and runs the training call (serving/training_call.py) on the upload."""

import weights.quiet  # noqa: F401 (first: keeps libraries' import-time noise out of logs)

# isort: split
import logging
from typing import Optional

from cog import Input, Path

import serving.cog_files  # noqa: F401  (Cog's file downloads are ours: see there)
from families import SDXL
from preprocess import PreprocessConfig
from serving.inputs import declared, field_inputs
from serving.training_call import train_on_upload
from training.config import TrainingConfig

# The summaries of preprocessing and the store are INFO logs; Cog shows what reaches stderr.
logging.basicConfig(level=logging.INFO, format="%(message)s")


def _config(name: str, description: str):
    return declared(TrainingConfig, name, description)


def _preprocess(name: str, description: str):
    return declared(PreprocessConfig, name, description)


def train(
    input_images: Path = Input(
        description="A .zip or .tar file containing the image files that will be used for "
        "fine-tuning"
    ),
    seed: Optional[int] = _config(
        "seed", "Random seed for reproducible training. Leave empty to use a random seed"
    ),
    resolution: int = _config(
        "resolution", "Square pixel resolution which your images will be resized to for training"
    ),
    train_batch_size: int = _config("train_batch_size", "Batch size (per device) for training"),
    num_train_epochs: int = _config(
        "num_train_epochs", "Number of epochs to loop through your training dataset"
    ),
    max_train_steps: Optional[int] = _config(
        "max_train_steps",
        "Number of individual training steps. Takes precedence over num_train_epochs",
    ),
    is_lora: bool = _config(
        "is_lora", "Whether to use LoRA training. If set to False, will use Full fine tuning"
    ),
    unet_learning_rate: float = _config(
        "unet_learning_rate", "Learning rate for the U-Net (full fine-tuning only)"
    ),
    ti_lr: Optional[float] = _config(
        "ti_lr",
        "Scaling of learning rate for training textual inversion embeddings. 0 trains no new "
        "tokens. Empty: see lora_lr",
    ),
    lora_lr: Optional[float] = _config(
        "lora_lr",
        "Learning rate for training LoRA embeddings. 0 gives pure textual inversion. With "
        "every learning input empty (optimizer, lora_lr, ti_lr, lora_rank, lr_scheduler, "
        "lr_warmup_steps, min_snr_gamma, ema_decay), the lora_type's measured recipe trains; "
        "with any of them set, the empty ones take Replicate's values (1e-4, 4e-4 with "
        "lora_type=style)",
    ),
    lora_rank: Optional[int] = _config(
        "lora_rank", "Rank of LoRA embeddings. Empty: see lora_lr (Replicate's: 32)"
    ),
    lora_alpha: Optional[float] = _config(
        "lora_alpha", "LoRA alpha (the update is scaled by alpha/rank). Empty: equal to the rank"
    ),
    lora_plus_ratio: float = _config(
        "lora_plus_ratio",
        "LoRA+: the LoRA B matrices learn this many times faster than the A matrices "
        "(16 in the LoRA+ paper). 1: one learning rate for both",
    ),
    lora_method: str = _config(
        "lora_method",
        "How the LoRA's update is shaped: 'lora' (low-rank), 'dora' (LoRA plus a trained "
        "magnitude per output row) or 'lokr' (a Kronecker product of two small factors, "
        "LyCORIS's LoKr). SDXL and SD 1.5",
    ),
    lr_scheduler: Optional[str] = _config(
        "lr_scheduler",
        "Learning rate scheduler to use for training ('constant' ignores warmup). Empty: see "
        "lora_lr (Replicate's: constant)",
    ),
    lr_warmup_steps: Optional[int] = _config(
        "lr_warmup_steps",
        "Number of warmup steps for lr schedulers with warmups. Empty: see lora_lr "
        "(Replicate's: 100)",
    ),
    token_string: str = _config(
        "token_string",
        "A unique string that will be trained to refer to the concept in the input images. "
        "Can be anything, but TOK works well",
    ),
    token_init_word: Optional[str] = _config(
        "token_init_word",
        "A word the new tokens start from, e.g. the subject's class ('dog'). Empty: random",
    ),
    caption_prefix: Optional[str] = _config(
        "caption_prefix",
        "Text which will be used as prefix during automatic captioning. Must contain the "
        "`token_string`. For example, if caption text is 'a cat sitting', and prefix is 'a "
        "photo of TOK, ', the caption will be 'a photo of TOK, a cat sitting'. Empty: 'a photo "
        "of <token_string>, ' ('in the style of <token_string>, ' with lora_type=style)",
    ),
    caption_suffix: str = _preprocess(
        "caption_suffix",
        "Text after automatic captions, e.g. ' in the style of TOK' (then caption_prefix may "
        "leave the token_string out)",
    ),
    autocaption: bool = _preprocess(
        "autocaption",
        "Caption images that come without a caption file with BLIP; false: those get the "
        "caption prefix alone",
    ),
    mask_target_prompts: Optional[str] = _preprocess(
        "mask_target_prompts",
        "Prompt that describes part of the image that you will find important. For example, "
        "if you are fine-tuning your pet, `photo of a dog` will be a good prompt. Prompt-based "
        "masking is used to focus the fine-tuning process on the important/salient parts of "
        "the image",
    ),
    crop_based_on_salience: bool = _preprocess(
        "crop_based_on_salience",
        "If you want to crop the image to `target_size` based on the important parts of the "
        "image, set this to True. If you want to crop the image based on face detection, set "
        "this to False",
    ),
    use_face_detection_instead: bool = _preprocess(
        "use_face_detection_instead",
        "If you want to use face detection instead of CLIPSeg for masking. For face "
        "applications, we recommend using this option.",
    ),
    clipseg_temperature: float = _preprocess(
        "clipseg_temperature",
        "How blurry you want the CLIPSeg mask to be. We recommend this value be something "
        "between `0.5` to `1.0`. If you want to have more sharp mask (but thus more errorful), "
        "you can decrease this value.",
    ),
    verbose: bool = _config("verbose", "verbose output"),
    checkpointing_steps: int = _config(
        "checkpointing_steps",
        "Number of steps between saving checkpoints, kept in the tarball's checkpoints/ (each "
        "a full copy of the weights). 0, or at least the number of steps (Replicate's 999999): "
        "none, the tarball holds the final weights only",
    ),
    input_images_filetype: str = _preprocess(
        "input_images_filetype",
        "Filetype of the input images. Can be either `zip` or `tar`. By default its `infer`, "
        "and it will be inferred from the ext of input file.",
    ),
    bucket_resolutions: Optional[str] = _config(
        "bucket_resolutions",
        "Smaller sizes every image is also trained at, a comma list below resolution (e.g. "
        "'512,640' with resolution 768): multi-resolution buckets",
    ),
    lora_layers_regex: Optional[str] = _config(
        "lora_layers_regex",
        "A regular expression searched in the U-Net's module names (e.g. 'unet\\.up_blocks'): "
        "LoRA trains the linear and convolution layers it matches. Empty: the attention "
        "projections",
    ),
    base_quantization: str = _config(
        "base_quantization",
        "int8: hold the frozen U-Net's weights in 8 bits while the LoRA trains (half the "
        "memory, slightly different results)",
    ),
    aspect_buckets: bool = _preprocess(
        "aspect_buckets",
        "Crop each image to the closest of several aspect ratios of about resolution² pixels "
        "(portrait and landscape buckets) instead of a square",
    ),
    optimizer: Optional[str] = _config(
        "optimizer",
        "Optimizer. The 8-bit ones (adamw8bit, adam8bit, lion8bit) keep their states in 8 bits "
        "(less memory); with prodigy use learning rates of 1.0. Empty: see lora_lr "
        "(Replicate's: adamw)",
    ),
    ema_decay: Optional[float] = _config(
        "ema_decay",
        "Save an exponential moving average of the trained weights with this decay (e.g. "
        "0.99) instead of the last step's. 0: the last step's. Empty: see lora_lr",
    ),
    noise_offset: float = _config(
        "noise_offset", "Noise offset (e.g. 0.05) helps learn very dark or bright images"
    ),
    min_snr_gamma: Optional[float] = _config(
        "min_snr_gamma",
        "Min-SNR loss weighting gamma (5 is typical); 0 disables it. Empty: see lora_lr",
    ),
    max_grad_norm: float = _config(
        "max_grad_norm", "Clip gradients to this norm; 0 disables clipping"
    ),
    flip_augmentation: bool = _config(
        "flip_augmentation",
        "Also train on horizontally mirrored images (not for asymmetric subjects)",
    ),
    cache_latents_to_disk: bool = _config(
        "cache_latents_to_disk",
        "Keep the encoded images on disk instead of in memory, for large image sets (the same "
        "training)",
    ),
    caption_dropout: float = _config(
        "caption_dropout", "Probability of training a step with an empty caption"
    ),
    shuffle_tokens: bool = _config(
        "shuffle_tokens", "Shuffle the comma-separated parts of each caption every step"
    ),
    keep_tokens: int = _config(
        "keep_tokens",
        "Number of leading comma-separated caption parts kept in place when shuffling",
    ),
    num_repeats: int = _config("num_repeats", "How many times each image is shown per epoch"),
    gradient_accumulation_steps: int = _config(
        "gradient_accumulation_steps", "Micro-batches accumulated per optimizer step"
    ),
    gradient_checkpointing: bool = _config(
        "gradient_checkpointing", "Trade compute for memory in the U-Net"
    ),
    train_text_encoder: bool = _config(
        "train_text_encoder", "Also train a LoRA on both text encoders"
    ),
    text_encoder_lr: float = _config("text_encoder_lr", "Learning rate of the text-encoder LoRA"),
    ti_frac: Optional[float] = _config(
        "ti_frac",
        "Fraction of the steps during which the token embeddings train (the pivot). Empty: 0.5 "
        "when a LoRA or the U-Net trains too, else 1",
    ),
    lora_type: str = _config(
        "lora_type",
        "subject, or style: a faster LoRA rate (4e-4), the caption prefix 'in the style of "
        "<token_string>, ' and a loss over the whole image (for the inputs left empty)",
    ),
    sample_prompts: Optional[str] = _config(
        "sample_prompts",
        "Prompts rendered with the weights being trained, one per line (use the token_string, "
        "e.g. 'a photo of TOK on the beach')",
    ),
    sample_negative_prompt: str = _config(
        "sample_negative_prompt", "Negative prompt for the samples"
    ),
    sample_every: int = _config(
        "sample_every", "Render the samples every N steps (0: at the end only)"
    ),
    class_prompt: Optional[str] = _config(
        "class_prompt",
        "Prior preservation: prompts of the subject's class without the trigger, one per line "
        "(e.g. 'a photo of a dog'); the base model draws num_class_images of them before "
        "training, and the training keeps drawing those for them",
    ),
    num_class_images: int = _config(
        "num_class_images", "Prior preservation: how many class images (0: none)"
    ),
    prior_loss_weight: float = _config(
        "prior_loss_weight", "Prior preservation: weight of the class images' loss"
    ),
    base_model: Optional[str] = Input(
        description="Base model, SDXL or SD 1.5 (told from its config): a Hugging Face repo "
        "id or an http(s) URL of a single-file .safetensors checkpoint or of a tar of a "
        "diffusers folder. Empty: the deployment's BASE_MODEL",
        default=None,
    ),
    dry_run: bool = Input(
        description="Only preprocess and report the plan (images, captions, steps, epochs, "
        "estimated training time from a few timed steps) and the preview; no training",
        default=False,
    ),
    resume_from: Optional[str] = Input(
        description="Continue an earlier run: the URL of its trained_model.tar, written with "
        "checkpointing_steps > 0. Training goes on from its newest checkpoint exactly as if it "
        "had not stopped, given the same inputs (the seed defaults to that run's)",
        default=None,
    ),
) -> Path:
    inputs = {k: v for k, v in locals().items() if k != "input_images"}
    config = TrainingConfig(**field_inputs(TrainingConfig, inputs))
    preprocessing = field_inputs(PreprocessConfig, inputs)
    return Path(
        train_on_upload(
            config,
            preprocessing,
            input_images,
            base_model,
            SDXL,
            inputs,
            dry_run,
            resume_from=resume_from,
        )
    )
