"""Cog `train()` of the FLUX.1 container: declares the inputs (names and defaults of Replicate's
Flux LoRA trainer; each lives on its `FluxTrainingInputs` field), turns them into the training
settings, and runs the same training call as the SDXL container (serving/training_call.py).
The FLUX.2 [klein] container's train() is the same, for its family (`trainer`)."""

import weights.quiet  # noqa: F401 (first: keeps libraries' import-time noise out of logs)

# isort: split
import logging
from typing import Optional

from cog import Input, Path, Secret

import serving.cog_files  # noqa: F401  (Cog's file downloads are ours: see there)
from families import FLUX, ModelFamily
from serving.inputs import declared, field_inputs, revealed
from serving.training_call import package_pretrained_lora, train_on_upload
from training.flux_inputs import FluxTrainingInputs

logging.basicConfig(level=logging.INFO, format="%(message)s")


def _input(name: str, description: str):
    return declared(FluxTrainingInputs, name, description)


def trainer(family: ModelFamily):
    """The `train()` of the container of `family` (a FLUX generation): these inputs, trained
    on that family's base models."""

    def train(
        input_images: Optional[Path] = Input(
            description="A zip file containing the images that will be used for training. We "
            "recommend a minimum of 10 images. If you include captions, include them as one .txt "
            "file per image, e.g. my-photo.jpg should have a caption file named my-photo.txt.",
            default=None,
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
            "optimizer",
            "Optimizer. The 8-bit ones keep their states in 8 bits (less memory); with prodigy use "
            "a learning rate of 1.0",
        ),
        cache_latents_to_disk: bool = _input(
            "cache_latents_to_disk",
            "Use this if you have lots of input images and you hit out of memory errors: the "
            "encoded images are kept on disk instead of in memory (the same training)",
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
        seed: Optional[int] = _input(
            "seed", "Random seed for reproducible training. Empty: random"
        ),
        hf_repo_id: Optional[str] = _input(
            "hf_repo_id",
            "Hugging Face repository ID, if you'd like to upload the trained LoRA to Hugging Face. "
            "For example, lucataco/flux-dev-lora. If the given repo does not exist, a new public "
            "repo will be created.",
        ),
        hf_token: Optional[Secret] = _input(
            "hf_token",
            "Hugging Face token, if you'd like to upload the trained LoRA to Hugging Face.",
        ),
        wandb_api_key: Optional[Secret] = _input(
            "wandb_api_key",
            "Weights and Biases API key, if you'd like to log training progress to W&B.",
        ),
        wandb_project: str = _input(
            "wandb_project",
            "Weights and Biases project name. Only applicable if wandb_api_key is set.",
        ),
        wandb_run: Optional[str] = _input(
            "wandb_run", "Weights and Biases run name. Only applicable if wandb_api_key is set."
        ),
        wandb_entity: Optional[str] = _input(
            "wandb_entity",
            "Weights and Biases entity name. Only applicable if wandb_api_key is set.",
        ),
        wandb_sample_interval: int = _input(
            "wandb_sample_interval",
            "Step interval for sampling output images that are logged to W&B. Only applicable if "
            "wandb_api_key is set.",
        ),
        wandb_sample_prompts: Optional[str] = _input(
            "wandb_sample_prompts",
            "Newline-separated list of prompts to use when logging samples to W&B (also kept in "
            "the tarball's samples/).",
        ),
        wandb_save_interval: int = _input(
            "wandb_save_interval",
            "Step interval for saving intermediate LoRA weights to W&B. Only applicable if "
            "wandb_api_key is set.",
        ),
        skip_training_and_use_pretrained_hf_lora_url: Optional[str] = _input(
            "skip_training_and_use_pretrained_hf_lora_url",
            "If you'd like to skip LoRA training altogether and instead package a pre-trained "
            f"{family.title} LoRA, give its download URL, e.g. "
            "https://huggingface.co/fofr/flux-80s-cyberpunk/resolve/main/lora.safetensors.",
        ),
        base_model: Optional[str] = Input(
            description=f"Base {family.title} model: a Hugging Face repo id or an http(s) URL of "
            "a tar of a diffusers folder. Empty: the deployment's BASE_MODEL",
            default=None,
        ),
        checkpointing_steps: int = _input(
            "checkpointing_steps",
            "Every N steps, keep a copy of the LoRA in the tarball's checkpoints/ (the newest with "
            "the state resume_from continues from). 0: none",
        ),
        resume_from: Optional[str] = Input(
            description="Continue an earlier run: the URL of its trained_model.tar, written with "
            "checkpointing_steps > 0. Training goes on from its newest checkpoint exactly as if it "
            "had not stopped, given the same inputs (the seed defaults to that run's)",
            default=None,
        ),
        dry_run: bool = Input(
            description="Only preprocess and report the plan and the preview; no training",
            default=False,
        ),
    ) -> Path:
        # The inputs for the record (Secrets stay masked).
        inputs = {k: v for k, v in locals().items() if k not in ("input_images", "family")}
        return train_family(family, inputs, input_images, base_model, dry_run, resume_from)

    return train


def train_family(
    family: ModelFamily,
    inputs: dict,
    input_images: Path | None,
    base_model: str | None,
    dry_run: bool,
    resume_from: str | None,
) -> Path:
    """One training of `family` from the declared `inputs`, or the packaging of a LoRA trained
    elsewhere (`skip_training_and_use_pretrained_hf_lora_url`)."""
    flux = FluxTrainingInputs(**field_inputs(FluxTrainingInputs, revealed(inputs)))
    accounts = flux.accounts()
    pretrained = flux.skip_training_and_use_pretrained_hf_lora_url
    if pretrained:
        return Path(
            package_pretrained_lora(pretrained, family, flux.trigger_word, inputs, accounts)
        )
    return Path(
        train_on_upload(
            flux.training_config(),
            flux.preprocess_options(),
            input_images,
            base_model,
            family,
            inputs,
            dry_run,
            accounts=accounts,
            resume_from=resume_from,
        )
    )


train = trainer(FLUX)
