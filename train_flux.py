"""Cog `train()` of the FLUX.1 container: declares the inputs (names and defaults of Replicate's
Flux LoRA trainer; each lives on its `FluxTrainingInputs` field), turns them into the training
settings, and runs the same training call as the SDXL container (serving/training_call.py)."""

import logging
from typing import Optional

from cog import Input, Path

import serving.cog_files  # noqa: F401  (Cog's file downloads are ours: see there)
from families import FLUX
from serving.inputs import declared, field_inputs
from serving.training_call import train_on_upload
from training.flux_inputs import FluxTrainingInputs

logging.basicConfig(level=logging.INFO, format="%(message)s")


def _input(name: str, description: str):
    return declared(FluxTrainingInputs, name, description)


def train(
    input_images: Path = Input(
        description="A zip file containing the images that will be used for training. We "
        "recommend a minimum of 10 images. If you include captions, include them as one .txt "
        "file per image, e.g. my-photo.jpg should have a caption file named my-photo.txt."
    ),
    trigger_word: str = _input(
        "trigger_word",
        "The trigger word refers to the object, style or concept you are training on. Pick a "
        "string that isn't a real word, like TOK or something related to what's being trained",
    ),
    lora_type: str = _input(
        "lora_type", "Type of LoRA: subject (a photo of TOK) or style (in the style of TOK)"
    ),
    autocaption: bool = _input(
        "autocaption", "Automatically caption images (those without a .txt caption)"
    ),
    autocaption_prefix: Optional[str] = _input(
        "autocaption_prefix",
        "Optional: Text you want to appear at the beginning of all your generated captions; "
        "for example, 'a photo of TOK, '. Empty: the lora_type's",
    ),
    autocaption_suffix: Optional[str] = _input(
        "autocaption_suffix",
        "Optional: Text you want to appear at the end of all your generated captions; for "
        "example, ' in the style of TOK'",
    ),
    steps: int = _input("steps", "Number of training steps. Recommended range 500-4000"),
    learning_rate: float = _input("learning_rate", "Learning rate"),
    batch_size: int = _input("batch_size", "Batch size"),
    resolution: str = _input(
        "resolution",
        "Image resolutions for training, a comma list: every image is trained at each",
    ),
    lora_rank: int = _input(
        "lora_rank", "Higher ranks take longer to train but can capture more complex features"
    ),
    caption_dropout_rate: float = _input(
        "caption_dropout_rate",
        "Advanced setting. Determines how often a caption is ignored. 0.05 means for 5% of all "
        "steps an image will be used without its caption",
    ),
    optimizer: str = _input(
        "optimizer", "Optimizer (adamw8bit needs bitsandbytes: without it, adamw is used)"
    ),
    cache_latents_to_disk: bool = _input(
        "cache_latents_to_disk", "Accepted for compatibility: latents are always cached"
    ),
    layers_to_optimize_regex: Optional[str] = _input(
        "layers_to_optimize_regex",
        "Regular expression to match specific layers to optimize, e.g. "
        "'transformer.single_transformer_blocks.(7|12|16|20).proj_out'",
    ),
    gradient_checkpointing: bool = _input(
        "gradient_checkpointing",
        "Turn on gradient checkpointing; saves memory at the cost of training speed. "
        "Automatically enabled for batch sizes > 1",
    ),
    base_quantization: str = _input(
        "base_quantization",
        "int8: hold the frozen transformer's weights in 8 bits while the LoRA trains, half "
        "the memory (FLUX.1-dev fits a 24 GB GPU), slightly different results",
    ),
    seed: Optional[int] = _input("seed", "Random seed for reproducible training. Empty: random"),
    base_model: Optional[str] = Input(
        description="Base FLUX.1 model: a Hugging Face repo id or an http(s) URL of a tar of "
        "a diffusers folder. Empty: the deployment's BASE_MODEL",
        default=None,
    ),
    dry_run: bool = Input(
        description="Only preprocess and report the plan and the preview; no training",
        default=False,
    ),
) -> Path:
    inputs = {k: v for k, v in locals().items() if k != "input_images"}
    flux = FluxTrainingInputs(**field_inputs(FluxTrainingInputs, inputs))
    config = flux.training_config()
    options = flux.preprocess_options()
    return Path(train_on_upload(config, options, input_images, base_model, FLUX, inputs, dry_run))
