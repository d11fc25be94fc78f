"""Which models to load and where to keep them: every environment variable in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from families import FAMILIES, SDXL, ModelFamily
from weights.network import ALLOWED_HOSTS_VARIABLE, AllowList

TINY = "tiny"  # BASE_MODEL / REFINER_MODEL / SAFETY_CHECKER_MODEL: the embedded tiny models
TOY = "toy"  # BASE_MODEL: the tiny SDXL pretrained on the toy world (weights/embedded/toy.py)
TOY_FLUX = "toy-flux"  # the tiny FLUX.1 pretrained on the toy world (weights/embedded/toy_flux.py)
# BASE_MODEL names of the embedded models: each family's tiny one (`tiny`, `tiny-flux`, ...)
# and the toy base. Under SDXL_TUNER_PROFILE=tiny a container's base is its family's tiny one.
EMBEDDED_MODELS = (*(f.tiny_model for f in FAMILIES.values() if f.tiny_model), TOY, TOY_FLUX)
# SDXL_TUNER_PROFILE=tiny: every model variable left unset is `tiny` and the hub is offline,
# the one switch for the embedded, offline setup (as is a BASE_MODEL naming an embedded model).
PROFILE_VARIABLE = "SDXL_TUNER_PROFILE"
PROFILES = ("tiny",)
DEFAULT_SAFETY_CHECKER = "CompVis/stable-diffusion-safety-checker"
GIB = 1 << 30
# Folders whose files a request may name by path (os.pathsep-separated); see references.py.
LOCAL_DIRS_VARIABLE = "SDXL_TUNER_LOCAL_DIRS"
TRAINING_PROCESSES_VARIABLE = "SDXL_TUNER_TRAINING_PROCESSES"
LOADED_WEIGHTS_VARIABLE = "SDXL_TUNER_LOADED_WEIGHTS"
# Every variable that names a model; `tiny` in each gives the fully offline, embedded setup.
MODEL_VARIABLES = (
    "BASE_MODEL",
    "REFINER_MODEL",
    "SAFETY_CHECKER_MODEL",
    "CAPTION_MODEL",
    "MASK_MODEL",
    "UPSCALER_MODEL",
)

# The training-data preprocessors Replicate's SDXL trainer uses (CAPTION_MODEL, MASK_MODEL,
# UPSCALER_MODEL override them; `tiny` selects weights/embedded/tiny_preprocessors.py).
# `repo@revision` pins a commit: for CLIPSeg and Swin2SR the safetensors weights exist only in
# the hub's conversion pull requests, whose commits these are (we never unpickle .bin files).
DEFAULT_CAPTION_MODEL = (
    "Salesforce/blip-image-captioning-large@2227ac38c9f16105cb0412e7cab4759978a8fd90"
)
DEFAULT_MASK_MODEL = "CIDAS/clipseg-rd64-refined@325a839908143a34b409ae6f2910fa015ea390e6"
DEFAULT_UPSCALER_MODEL = (
    "caidas/swin2SR-realworld-sr-x4-64-bsrgan-psnr@fbc21c5ea78579a0d415f74e06eefb5c77028475"
)


@dataclass(frozen=True)
class ModelSettings:
    base_model: str
    refiner_model: str
    cache_dir: Path
    device: str | None  # None: pick automatically
    dtype: str | None
    safety_checker_model: str = DEFAULT_SAFETY_CHECKER
    # Config folder (or hub id) for single-file checkpoints; None: diffusers infers it.
    single_file_config: str | None = None
    cache_min_free_bytes: int = 5 * GIB  # the store evicts old downloads to keep this free
    max_download_bytes: int = 20 * GIB
    caption_model: str = DEFAULT_CAPTION_MODEL  # BLIP captioning
    mask_model: str = DEFAULT_MASK_MODEL  # CLIPSeg prompt masks
    upscaler_model: str = DEFAULT_UPSCALER_MODEL  # Swin2SR super-resolution
    local_dirs: tuple[Path, ...] = ()  # the operator's allow-list for paths in requests
    # Non-public hosts downloads may reach (weights/network.py); none by default.
    allowed_hosts: AllowList = AllowList()
    training_processes: int | None = None  # data-parallel training; None: one per GPU
    # Trained weights a predictor keeps in memory, at most (its LRU also keeps under a byte
    # budget); None: the bytes alone bound it. A Ray Serve replica's LoRA count (fleet/).
    loaded_weights: int | None = None
    speed: tuple[str, ...] = ()  # GPU speed options (weights/runtime.py SPEED_OPTIONS)

    @classmethod
    def from_env(cls, family: ModelFamily = SDXL) -> ModelSettings:
        """`family`: the container's (SDXL/SD 1.5 or FLUX.1), whose base is the default."""
        cache = os.environ.get("SDXL_TUNER_CACHE") or Path.home() / ".cache" / "sdxl-tuner"
        profile = tiny_profile()
        default_base = family.tiny_model if profile else family.default_base_model
        base = os.environ.get("BASE_MODEL") or default_base
        embedded = profile or base in EMBEDDED_MODELS  # no real refiner beside a tiny base

        def model(variable: str, default: str) -> str:
            return os.environ.get(variable) or (TINY if embedded else default)

        return cls(
            base_model=base,
            refiner_model=model("REFINER_MODEL", family.default_refiner_model or ""),
            cache_dir=Path(cache),
            device=os.environ.get("TORCH_DEVICE") or None,
            dtype=os.environ.get("TORCH_DTYPE") or None,
            safety_checker_model=model("SAFETY_CHECKER_MODEL", DEFAULT_SAFETY_CHECKER),
            single_file_config=os.environ.get("SINGLE_FILE_CONFIG") or None,
            cache_min_free_bytes=_gib("SDXL_TUNER_CACHE_MIN_FREE_GB", 5),
            max_download_bytes=_gib("SDXL_TUNER_MAX_DOWNLOAD_GB", 20),
            caption_model=model("CAPTION_MODEL", DEFAULT_CAPTION_MODEL),
            mask_model=model("MASK_MODEL", DEFAULT_MASK_MODEL),
            upscaler_model=model("UPSCALER_MODEL", DEFAULT_UPSCALER_MODEL),
            local_dirs=tuple(
                Path(part).expanduser().resolve()
                for part in os.environ.get(LOCAL_DIRS_VARIABLE, "").split(os.pathsep)
                if part
            ),
            allowed_hosts=AllowList.parse(os.environ.get(ALLOWED_HOSTS_VARIABLE, "")),
            training_processes=_count(TRAINING_PROCESSES_VARIABLE),
            loaded_weights=_count(LOADED_WEIGHTS_VARIABLE),
            speed=tuple(
                part.strip()
                for part in os.environ.get("SDXL_TUNER_SPEED", "").split(",")
                if part.strip()
            ),
        )


@dataclass(frozen=True)
class HubSettings:
    """huggingface_hub's own variables, read when used (the library reads them at import)."""

    cache_dir: Path
    offline: bool
    endpoint: str = "https://huggingface.co"  # HF_ENDPOINT: the hub (or a mirror) uploads go to

    @classmethod
    def from_env(cls) -> HubSettings:
        home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
        cache = os.environ.get("HF_HUB_CACHE") or Path(home) / "hub"
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        offline = offline or tiny_profile()
        endpoint = os.environ.get("HF_ENDPOINT") or cls.endpoint
        return cls(cache_dir=Path(cache).expanduser(), offline=offline, endpoint=endpoint)


def wandb_dir() -> Path | None:
    """WANDB_DIR, Weights & Biases' own variable: where its runs are written (an offline run
    stays there for `wandb sync`); None: the training's run folder, deleted with it."""
    value = os.environ.get("WANDB_DIR")
    return Path(value).expanduser() if value else None


def tiny_profile() -> bool:
    profile = os.environ.get(PROFILE_VARIABLE, "")
    if profile and profile not in PROFILES:
        raise ValueError(f"{PROFILE_VARIABLE}={profile!r}: use one of {', '.join(PROFILES)}.")
    return profile == "tiny"


def _count(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name}={value!r}: use a whole number, at least 1.")
    return int(value)


def _gib(name: str, default: float) -> int:
    value = os.environ.get(name) or default
    try:
        return int(float(value) * GIB)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number of GiB.") from None


@dataclass(frozen=True)
class StudioSettings:
    """The studio's operator settings (docs/studio.md)."""

    token: str | None  # SDXL_TUNER_STUDIO_TOKEN: required from every visitor when set
    price_per_gpu_hour: float | None  # SDXL_TUNER_PRICE_PER_GPU_HOUR: shown with estimates

    @classmethod
    def from_env(cls) -> StudioSettings:
        price = os.environ.get("SDXL_TUNER_PRICE_PER_GPU_HOUR")
        return cls(
            token=os.environ.get("SDXL_TUNER_STUDIO_TOKEN") or None,
            price_per_gpu_hour=float(price) if price else None,
        )
