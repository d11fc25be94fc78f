"""The weights tarball's layout (docs/weights-tarball.md): what each file is (its role), the
name it has, and `manifest.json`, which says where each role lies and what the weights are
for. The trainer writes the files at the well-known names below and the manifest of what it
wrote (training/bundle.py, training/export.py); readers find them through `BundleFiles`
(weights/trained_files.py, training/resume.py), by the manifest when the tarball has one,
else by the well-known names: tarballs written before the manifest, and Replicate's cog-sdxl
ones (`lora.safetensors`, `embeddings.pti`, `special_params.json`)."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

LORA_FILE = "lora.safetensors"
LORA_KOHYA_FILE = "lora_kohya.safetensors"
UNET_FILE = "unet.safetensors"
EMBEDDINGS_PTI_FILE = "embeddings.pti"
EMBEDDINGS_FILE = "embeddings.safetensors"
SPECIAL_PARAMS_FILE = "special_params.json"
TRAINING_CONFIG_FILE = "training_config.json"
MODEL_CARD_FILE = "README.md"
PREVIEW_FILE = "preview.png"
LOSS_PLOT_FILE = "loss.png"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
CHECKPOINTS_DIR = "checkpoints"
MANIFEST_FILE = "manifest.json"
BUNDLE_FILE = "trained_model.tar"
# A dry run's tarball instead: the plan, the preview, and a small picture of each crop and of
# its mask.
DRY_RUN_PLAN_FILE = "plan.json"
DRY_RUN_IMAGES_DIR = "images"
DRY_RUN_MASKS_DIR = "masks"

# The CLIP text model's module prefix in LoRA files (transformers 4 names, which A1111,
# ComfyUI and older diffusers use): written by the exporter, read back by the predictor.
TEXT_MODEL = "text_model"

MANIFEST_FORMAT = "sdxl-tuner weights tarball"
# MAJOR.MINOR. A new minor only adds (roles, keys), which older readers ignore; a new major
# changes what something means, and older readers refuse it.
MANIFEST_VERSION = "1.0"


class Role(enum.StrEnum):
    """What a file of the tarball is; the manifest lists the files by these names."""

    LORA = "lora"  # diffusers / PEFT names
    LORA_KOHYA = "lora_kohya"  # kohya / ComfyUI names (FLUX.1: BFL names)
    EMBEDDINGS_PTI = "embeddings_pti"  # the token vectors, Replicate's layout
    EMBEDDINGS = "embeddings"  # the same vectors, A1111 / ComfyUI's layout
    SPECIAL_PARAMS = "special_params"  # the token map, Replicate's file
    UNET = "unet"  # a full fine-tune's UNet
    TRAINING_RECORD = "training_record"
    MODEL_CARD = "model_card"
    LOSS_PLOT = "loss_plot"
    METRICS = "metrics"
    PREVIEW = "preview"
    SAMPLES = "samples"  # a folder
    CHECKPOINTS = "checkpoints"  # a folder of checkpoint folders (`checkpoint_name`)


# Where each role lies in every tarball this project writes, and where a tarball without a
# manifest is read from.
WELL_KNOWN: dict[Role, str] = {
    Role.LORA: LORA_FILE,
    Role.LORA_KOHYA: LORA_KOHYA_FILE,
    Role.EMBEDDINGS_PTI: EMBEDDINGS_PTI_FILE,
    Role.EMBEDDINGS: EMBEDDINGS_FILE,
    Role.SPECIAL_PARAMS: SPECIAL_PARAMS_FILE,
    Role.UNET: UNET_FILE,
    Role.TRAINING_RECORD: TRAINING_CONFIG_FILE,
    Role.MODEL_CARD: MODEL_CARD_FILE,
    Role.LOSS_PLOT: LOSS_PLOT_FILE,
    Role.METRICS: METRICS_FILE,
    Role.PREVIEW: PREVIEW_FILE,
    Role.SAMPLES: SAMPLES_DIR,
    Role.CHECKPOINTS: CHECKPOINTS_DIR,
}
FOLDER_ROLES = frozenset({Role.SAMPLES, Role.CHECKPOINTS})
# What the predictor loads. A tarball must hold these where its manifest lists them; the
# other files may be taken out (to make it smaller, or keep the record's URLs private).
WEIGHT_ROLES = (Role.LORA, Role.UNET, Role.EMBEDDINGS_PTI)


class ManifestError(ValueError):
    """A manifest.json that this code cannot read: malformed, or of a newer major version."""


@dataclass(frozen=True)
class Manifest:
    """What `manifest.json` says: each role's path in the tarball (`/`-separated, relative to
    its top level), the family the weights were trained for, and the trigger word with the
    tokens trained for it. The training record (training_config.json) holds the rest."""

    files: dict[Role, str]
    family: str | None = None  # a families.py name: sdxl, sd15, flux
    trigger_word: str | None = None  # the word prompts name the subject by
    token_map: dict[str, str] = field(default_factory=dict)  # e.g. {"TOK": "<s0><s1>"}
    version: str = MANIFEST_VERSION

    @classmethod
    def of_folder(
        cls,
        folder: Path,
        family: str | None,
        trigger_word: str | None,
        token_map: dict[str, str],
    ) -> Manifest:
        """The manifest of a staged tarball: every role present at its well-known name."""
        files = {role: name for role, name in WELL_KNOWN.items() if _exists(folder / name, role)}
        return cls(files, family, trigger_word, dict(token_map))

    def write(self, folder: Path) -> None:
        (Path(folder) / MANIFEST_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def to_json(self) -> dict:
        return {
            "format": MANIFEST_FORMAT,
            "version": self.version,
            "family": self.family,
            "trigger_word": self.trigger_word,
            "token_map": self.token_map,
            "files": {str(role): name for role, name in self.files.items()},
        }

    @classmethod
    def from_json(cls, data: dict, source: str) -> Manifest:
        """Check a manifest of this format (`source` names the tarball in messages): a newer
        major version is refused, roles this code does not know are left out."""
        where = f"{source}: {MANIFEST_FILE}"
        version = data.get("version")
        major = version.split(".")[0] if isinstance(version, str) else ""
        if not major.isdigit():
            raise ManifestError(f"{where} has no MAJOR.MINOR version (found {version!r}).")
        known = int(MANIFEST_VERSION.split(".")[0])
        if int(major) > known:
            raise ManifestError(
                f"{where} is version {version} of the tarball layout, newer than the "
                f"{known}.x this release reads. Load the tarball with the release of this "
                "model that wrote it, or a later one."
            )
        files = _mapping(data.get("files"), f"{where}: files")
        token_map = _mapping(data.get("token_map") or {}, f"{where}: token_map")
        for key in ("family", "trigger_word"):
            if not isinstance(data.get(key), str | None):
                raise ManifestError(f"{where}: {key} is not a string ({data.get(key)!r}).")
        roles = {str(role): role for role in Role}
        return cls(
            files={roles[k]: _relative_path(v, where) for k, v in files.items() if k in roles},
            family=data.get("family"),
            trigger_word=data.get("trigger_word"),
            token_map=token_map,
            version=version,
        )


def read_manifest(folder: Path, source: str) -> Manifest | None:
    """The manifest at the top of an unpacked tarball; None when it has none (a tarball
    written before the manifest, or another trainer's), or one of another format."""
    file = Path(folder) / MANIFEST_FILE
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    return Manifest.from_json(data, source)


@dataclass(frozen=True)
class BundleFiles:
    """An unpacked tarball's files by role: where its manifest puts them, or at the
    well-known names when it has no manifest."""

    root: Path
    manifest: Manifest | None

    @classmethod
    def open(cls, root: Path, source: str) -> BundleFiles:
        """`source` names the tarball in messages. A manifest that lists weights the
        tarball lacks is refused: loading the rest would be a silently different model."""
        bundle = cls(Path(root), read_manifest(root, source))
        listed = bundle.manifest.files if bundle.manifest is not None else {}
        missing = [listed[r] for r in WEIGHT_ROLES if r in listed and bundle.path(r) is None]
        if missing:
            raise ManifestError(
                f"{source}: {MANIFEST_FILE} lists {', '.join(missing)}, which the tarball "
                "lacks. Use the tarball as the training wrote it."
            )
        return bundle

    @property
    def names(self) -> dict[Role, str]:
        return self.manifest.files if self.manifest is not None else WELL_KNOWN

    def path(self, role: Role) -> Path | None:
        """The file (or folder) of `role`, or None when the tarball has none."""
        name = self.names.get(role)
        if name is None:
            return None
        path = self.root / name
        return path if _exists(path, role) else None


def checkpoint_name(step: int) -> str:
    """A checkpoint's folder under the checkpoints folder: `checkpoint-000200`."""
    return f"checkpoint-{step:06d}"


def checkpoint_step(folder: Path) -> int:
    return int(Path(folder).name.removeprefix("checkpoint-"))


def checkpoint_folders(checkpoints: Path | None) -> list[Path]:
    """The complete checkpoints under `checkpoints`, oldest first (none while being written)."""
    if checkpoints is None:
        return []
    return sorted(p for p in Path(checkpoints).glob("checkpoint-[0-9]*[0-9]") if p.is_dir())


def _exists(path: Path, role: Role) -> bool:
    return path.is_dir() if role in FOLDER_ROLES else path.is_file()


def _mapping(value, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestError(f"{where} is not an object of strings ({value!r:.80}).")
    return dict(value)


def _relative_path(name: str, where: str) -> str:
    """A path inside the tarball: relative, without `..`, so a manifest names nothing outside."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise ManifestError(f"{where} names {name!r}: files must lie inside the tarball.")
    return name
