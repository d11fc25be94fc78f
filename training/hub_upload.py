"""The trained LoRA on the Hugging Face hub (`hf_repo_id` and `hf_token`, as Replicate's Flux
trainer takes them): the repository is created when missing (public, as there), then one
commit adds the tarball's LoRA files and a model card for the hub.

Only the weights and the card leave: not the captions, the samples or training_config.json,
which records the request's URLs.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from formats.bundle import MANIFEST_FILE, MODEL_CARD_FILE, WELL_KNOWN, Manifest, Role
from training.config import InvalidTrainingConfig
from weights.references import HUB_ID
from weights.settings import EMBEDDED_MODELS

UPLOADED = (Role.LORA, Role.LORA_KOHYA)  # with the model card


@dataclass(frozen=True)
class HubUpload:
    repo_id: str  # `owner/name`, or `name` in the token's own namespace
    token: str = field(repr=False)

    @classmethod
    def from_inputs(cls, repo_id: str | None, token: str | None) -> HubUpload | None:
        """The upload the inputs ask for (None: neither is set), checked before any work."""
        if not repo_id and not token:
            return None
        if not (repo_id and token):
            missing = "hf_token" if repo_id else "hf_repo_id"
            raise InvalidTrainingConfig(
                f"{missing} is empty: uploading to the Hugging Face hub needs both hf_repo_id "
                "(e.g. 'your-name/my-flux-lora') and hf_token (a token with write access)."
            )
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(repo_id)
        except HFValidationError as error:
            raise InvalidTrainingConfig(f"hf_repo_id={repo_id!r}: {error}") from None
        return cls(repo_id, token)


def upload_bundle(bundle: Path, target: HubUpload, endpoint: str) -> None:
    """Upload the tarball's LoRA and a hub model card. The training succeeded and its tarball
    is the output either way, so a refused upload is reported in the log, not raised."""
    try:
        url = _upload(Path(bundle), target, endpoint)
    except Exception as error:  # the hub's answer: auth, quota, network, offline mode
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(
            f"hf_repo_id={target.repo_id!r}: the upload to the Hugging Face hub failed "
            f"({type(error).__name__}: {reason}). Check that hf_token may write to that "
            "repository; the tarball (this training's output) holds the same LoRA."
        )
        return
    print(f"Uploaded the LoRA and its model card to {url}")


def _upload(bundle: Path, target: HubUpload, endpoint: str) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi

    with tarfile.open(bundle) as tar:  # as this process wrote it: with its manifest
        listed = Manifest.from_json(json.load(tar.extractfile(MANIFEST_FILE)), bundle.name).files
        wanted = [
            role for role in (*UPLOADED, Role.MODEL_CARD, Role.TRAINING_RECORD) if role in listed
        ]
        files = {role: tar.extractfile(listed[role]).read() for role in wanted}
    record = json.loads(files.pop(Role.TRAINING_RECORD))
    card = hub_model_card(record, files.pop(Role.MODEL_CARD).decode())
    # On the hub under the well-known names, the ones the model card's snippet loads.
    files = {WELL_KNOWN[role]: data for role, data in files.items()}
    operations = [CommitOperationAdd(name, data) for name, data in sorted(files.items())]
    operations.append(CommitOperationAdd(MODEL_CARD_FILE, card.encode()))
    print(f"Uploading {', '.join(sorted(files))} and a model card to {target.repo_id}.")
    api = HfApi(endpoint=endpoint, token=target.token)
    repo = api.create_repo(target.repo_id, private=False, exist_ok=True)
    api.create_commit(
        repo.repo_id, operations=operations, commit_message="Upload a LoRA trained by train()"
    )
    return str(repo)


def hub_model_card(record: dict, card: str) -> str:
    """The bundle's model card with the hub's metadata in front: the base model (when it is
    a hub id), the trigger word as the instance prompt, and tags the hub lists LoRAs by."""
    metadata = {"library_name": "diffusers", "instance_prompt": record["trigger_word"]}
    base = record.get("base_model")
    if isinstance(base, str) and HUB_ID.fullmatch(base) and base not in EMBEDDED_MODELS:
        metadata["base_model"] = base.split("@")[0]
    lines = ["---", *(f"{key}: {json.dumps(value)}" for key, value in metadata.items())]
    lines += ["tags:", *(f"- {tag}" for tag in ("text-to-image", "lora", record["family"]))]
    note = "The training record and loss curve stay in the training's tarball."
    return "\n".join([*lines, "---", "", card.rstrip(), "", note, ""])
