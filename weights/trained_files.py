"""What a trained-weights reference turned out to be, once it is on local disk: a bundle in
this project's layout (its files found through formats/bundle.py's `BundleFiles`), the
original Replicate trainer's, or a bare LoRA."""

from __future__ import annotations

import enum
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from families import FAMILIES, ModelFamily, family_from_weight_names
from formats.bundle import (
    EMBEDDINGS_PTI_FILE,
    LORA_FILE,
    UNET_FILE,
    WEIGHT_ROLES,
    BundleFiles,
    Manifest,
    Role,
)

# Formats that hold Python pickles: loading one can run arbitrary code, so they are refused.
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")


class WeightsFormat(enum.Enum):
    BUNDLE = "bundle"  # this project's tarball
    REPLICATE_LEGACY = "replicate_legacy"  # the original Replicate SDXL trainer's tarball
    LORA_DIFFUSERS = "lora_diffusers"  # a bare LoRA, diffusers/PEFT keys
    LORA_KOHYA = "lora_kohya"  # a bare LoRA, kohya keys
    LORA_LYCORIS = "lora_lycoris"  # a bare LoKr or LoHa (LyCORIS keys), kohya or diffusers names


class UnrecognisedWeightsError(ValueError):
    """The files are not trained weights in any supported layout."""


class WrongFamilyError(ValueError):
    """Trained weights made for another model family (SDXL, SD 1.5) than the base model."""


class UnsafeFormatError(ValueError):
    """A pickle-based weights file: refused, because loading it could run code."""


def refuse_pickle(name: str) -> None:
    """Raise for a path or URL whose suffix names a format that is read by unpickling."""
    if name.startswith("data:"):
        return  # judged by content once decoded
    suffix = Path(urllib.parse.urlparse(name).path).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise UnsafeFormatError(
            f"{name}: {suffix} files are Python pickles, and loading one can run arbitrary code, "
            "so they are refused. Convert the weights to .safetensors in a trusted environment "
            "(`safetensors.torch.save_file(state_dict, 'weights.safetensors')`) and use that."
        )


@dataclass(frozen=True)
class TrainedWeights:
    source: str  # what the user passed (URL or path), for messages
    format: WeightsFormat
    lora: Path | None = None
    unet: Path | None = None  # full fine-tunes
    embeddings_pti: Path | None = None
    token_map: dict[str, str] | None = None  # special_params.json, e.g. {"TOK": "<s0><s1>"}
    training_config: Path | None = None
    lora_kohya: Path | None = None  # the same LoRA with kohya keys (this project's bundles)
    embeddings: Path | None = None  # the same vectors in the A1111 / ComfyUI layout
    # The family the weights were trained for: as training_config.json records it, else told
    # from the tensor names; None when neither tells.
    family: ModelFamily | None = None
    # The word the captions named the subject by, as training_config.json records it.
    trigger_word: str | None = None

    def check_family(self, family: ModelFamily) -> None:
        """Raise a clear error when these weights were made for another family than `family`."""
        if self.family is None or self.family is family:
            return
        made_for = self.family
        if made_for.container != family.container:  # another container of this project
            name = made_for.container
            where = (
                f"in the {made_for.title} container (`make serve CONTAINER={name}`, "
                f"`python -m serving.cli --container {name}`; docs/serving.md)"
            )
        else:
            where = (
                f"with an {made_for.title} base model (BASE_MODEL={made_for.default_base_model} "
                f"or another {made_for.title} checkpoint)"
            )
        raise WrongFamilyError(
            f"{self.source} holds weights trained for {made_for.title} ({made_for.name}), but "
            f"this model runs an {family.title} ({family.name}) base model, which they cannot "
            f"load into. Use them {where}, or train them again on an {family.title} base."
        )


def inspect_weights(path: Path, source: str | None = None) -> TrainedWeights:
    """Describe an unpacked bundle folder or a single LoRA `.safetensors` file."""
    path = Path(path)
    source = source or str(path)
    if path.is_file():
        refuse_pickle(str(path))
        return _bare_lora(path, source)
    if not path.is_dir():
        raise UnrecognisedWeightsError(f"{source}: no such file or folder.")
    folder = _bundle_root(path)
    bundle = BundleFiles.open(folder, source)
    lora, unet, pti = (bundle.path(r) for r in (Role.LORA, Role.UNET, Role.EMBEDDINGS_PTI))
    if lora is None and unet is None and pti is None:
        if bundle.manifest is not None:
            raise UnrecognisedWeightsError(
                f"{source}: its manifest.json lists none of {', '.join(WEIGHT_ROLES)}, so "
                "there are no weights to load."
            )
        return _bare_lora_in(folder, source)
    described = bundle.manifest or _described_without_manifest(bundle)
    legacy = lora is not None and lora_key_format(lora) is WeightsFormat.REPLICATE_LEGACY
    return TrainedWeights(
        source=source,
        format=WeightsFormat.REPLICATE_LEGACY if legacy else WeightsFormat.BUNDLE,
        lora=lora,
        unet=unet,
        embeddings_pti=pti,
        token_map=described.token_map,
        training_config=bundle.path(Role.TRAINING_RECORD),
        lora_kohya=bundle.path(Role.LORA_KOHYA),
        embeddings=bundle.path(Role.EMBEDDINGS),
        family=FAMILIES.get(described.family) or _family_from_files(lora, unet, pti),
        trigger_word=described.trigger_word,
    )


def _bare_lora(file: Path, source: str) -> TrainedWeights:
    return TrainedWeights(source, lora_key_format(file), lora=file, family=_family_from_files(file))


def _described_without_manifest(bundle: BundleFiles) -> Manifest:
    """The manifest a tarball without one (written before it, or by Replicate's cog-sdxl
    trainer) would have: the family and trigger word its training_config.json records, the
    token map of its special_params.json."""
    record = _training_record(bundle.path(Role.TRAINING_RECORD))
    special = bundle.path(Role.SPECIAL_PARAMS)
    token_map = json.loads(special.read_text()) if special else {}
    trigger_word = (record.get("config") or {}).get("token_string")
    return Manifest.of_folder(bundle.root, record.get("family"), trigger_word, token_map)


def _training_record(training_config: Path | None) -> dict:
    """What this project's trainer records in training_config.json (family, config, ...);
    empty for none, or for another trainer's file (the tensors tell the family instead)."""
    if training_config is None:
        return {}
    try:
        record = json.loads(training_config.read_text())
    except (ValueError, OSError):
        return {}
    return record if isinstance(record, dict) and isinstance(record.get("family"), str) else {}


def _family_from_files(*files: Path | None) -> ModelFamily | None:
    told = set()
    for file in files:
        if file is not None:
            try:
                told.add(family_from_weight_names(_tensor_names(file)))
            except UnrecognisedWeightsError:
                continue  # reading the weights reports it, with its context
    told.discard(None)
    return told.pop() if len(told) == 1 else None


def _bare_lora_in(folder: Path, source: str) -> TrainedWeights:
    """A zip or tar that holds just one LoRA file (as shared on the hub or Civitai)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    tensors = [p for p in files if p.suffix == ".safetensors"]
    if len(tensors) == 1:
        return _bare_lora(tensors[0], source)
    pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise UnrecognisedWeightsError(
            f"{source} holds only pickle files ({', '.join(pickles[:3])}); they are refused "
            "because loading one can run arbitrary code. Provide the weights as .safetensors."
        )
    found = ", ".join(p.name for p in tensors) or "no .safetensors file"
    raise UnrecognisedWeightsError(
        f"{source} holds none of {LORA_FILE}, {UNET_FILE} or {EMBEDDINGS_PTI_FILE} ({found}): "
        "it is not a trained-weights bundle or a single LoRA."
    )


def lora_key_format(file: Path) -> WeightsFormat:
    """Which key layout a LoRA safetensors file uses, judged from its keys."""
    keys = _tensor_names(file)
    if any(".lokr_" in k or ".hada_" in k for k in keys):
        return WeightsFormat.LORA_LYCORIS
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        return WeightsFormat.LORA_KOHYA
    if any("_lora.down." in k or "_lora.up." in k for k in keys):
        return WeightsFormat.REPLICATE_LEGACY
    if any(".lora_A." in k or ".lora.down." in k or ".lora_down." in k for k in keys):
        return WeightsFormat.LORA_DIFFUSERS
    raise UnrecognisedWeightsError(f"{file.name} has no LoRA keys in a known layout.")


def _tensor_names(file: Path) -> list[str]:
    try:
        with safe_open(str(file), framework="pt") as tensors:
            return list(tensors.keys())
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise UnrecognisedWeightsError(
            f"{file.name} is not a readable safetensors file: {error}"
        ) from None


def _bundle_root(folder: Path) -> Path:
    """Tarballs made by hand often wrap everything in one top-level folder."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder
