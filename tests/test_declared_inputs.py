"""Every input is written once: the Cog signature of each entry file, the schema clients see and
the configuration dataclass agree on names, defaults, ranges and choices."""

import json
import math
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from generation.request import FluxGenerationRequest, GenerationRequest
from preprocess import PreprocessConfig
from serving.containers import CONTAINERS
from serving.schema import PREDICTOR_REF, TRAINER_REF, build_schema, inspect_entry
from training.config import TrainingConfig
from training.flux_inputs import FluxTrainingInputs

# train() inputs that belong to the job itself rather than to a configuration dataclass.
JOB_INPUTS = {"input_images": MISSING, "base_model": None, "dry_run": False, "resume_from": None}
# PreprocessConfig fields train() takes from TrainingConfig or sets itself.
PREPROCESS_PLUMBING = {"input_path", "output_dir", "resolution", "token_string", "caption_prefix"}
PREPROCESS_PLUMBING |= {"settings", "size_multiple"}
# TrainingConfig fields that are not Cog inputs (tuning and bookkeeping).
TRAINING_INTERNAL = {"weight_decay", "sample_steps", "use_masks", "extra"}
# TrainingConfig fields the FLUX.1 container's W&B inputs set (training/flux_inputs.py).
TRAINING_INTERNAL |= {"wandb_project", "wandb_run", "wandb_entity", "wandb_save_interval"}


def declared_fields(*classes, leave_out=frozenset()):
    return {f.name: f for c in classes for f in fields(c) if f.name not in leave_out}


def assert_agree(
    reference: str, schema_name: str, expected: dict, job: dict, container: str = "sdxl"
) -> None:
    signature = inspect_entry(reference).inputs
    entries = CONTAINERS[container]
    schema = build_schema(entries.predictor, entries.trainer)["components"]["schemas"]
    properties = schema[schema_name]["properties"]
    assert set(signature) == set(properties) == set(expected) | set(job)
    for name, field in expected.items():
        meta, prop = field.metadata, properties[name]
        default = None if field.default is MISSING else field.default
        assert signature[name].default == default, name
        assert prop.get("default") == default, name
        assert (prop.get("minimum"), prop.get("maximum")) == (meta.get("ge"), meta.get("le")), name
        choices = meta.get("choices")
        enum = schema[name]["enum"] if "allOf" in prop else None
        assert enum == (list(choices) if choices else None), name
    for name, default in job.items():
        assert signature[name].default == (None if default is MISSING else default), name


def test_predict_inputs_are_the_generation_request():
    assert_agree(PREDICTOR_REF, "Input", declared_fields(GenerationRequest), {})


def test_train_inputs_are_the_training_and_preprocessing_configs():
    expected = {
        **declared_fields(TrainingConfig, leave_out=TRAINING_INTERNAL),
        **declared_fields(PreprocessConfig, leave_out=PREPROCESS_PLUMBING),
    }
    assert_agree(TRAINER_REF, "TrainingInput", expected, JOB_INPUTS)


# FluxGenerationRequest fields the Flux predictor leaves out: Replicate's Flux model has no
# negative prompt, scheduler, refiner, watermark choice or `loras` object.
FLUX_PREDICT_LEFT_OUT = {
    "negative_prompt",
    "scheduler",
    "refine",
    "high_noise_frac",
    "refine_steps",
    "apply_watermark",
    "loras",
}


def test_flux_predict_inputs_are_the_flux_generation_request():
    expected = declared_fields(FluxGenerationRequest, leave_out=FLUX_PREDICT_LEFT_OUT)
    assert_agree(CONTAINERS["flux"].predictor, "Input", expected, {}, container="flux")


def test_flux_train_inputs_are_the_flux_training_inputs():
    # input_images may be empty, with skip_training_and_use_pretrained_hf_lora_url.
    job = {"input_images": None, "base_model": None, "dry_run": False, "resume_from": None}
    expected = declared_fields(FluxTrainingInputs)
    assert_agree(CONTAINERS["flux"].trainer, "TrainingInput", expected, job, container="flux")


@pytest.mark.parametrize(
    ("name", "value"),
    [("caption_dropout", 1.0), ("lora_rank", 10**6), ("train_batch_size", 0), ("seed", 2**53)],
)
def test_the_schema_and_the_config_refuse_the_same_values(name, value):
    prop = build_schema()["components"]["schemas"]["TrainingInput"]["properties"][name]
    assert not prop["minimum"] <= value <= prop["maximum"]
    with pytest.raises(ValueError, match=f"{name}="):
        TrainingConfig(**{name: value})


@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_every_number_input_of_the_committed_schemas_has_finite_bounds(container):
    """What a client reads (the committed schema, as `cog build` writes it): no float or
    integer input is open-ended, so no value can overflow what it feeds."""
    schema_file = Path(__file__).resolve().parents[1] / ".cog" / "schemas" / f"{container}.json"
    schemas = json.loads(schema_file.read_text())["components"]["schemas"]
    for kind in ("Input", "TrainingInput"):
        for name, prop in schemas[kind]["properties"].items():
            if prop.get("type") in ("number", "integer"):
                bounds = (prop.get("minimum"), prop.get("maximum"))
                assert None not in bounds and all(map(math.isfinite, bounds)), (kind, name)
