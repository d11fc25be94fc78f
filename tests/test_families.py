"""The family facts table and detecting a model's family from its config."""

import inspect
import json

import diffusers
import pytest

from families import FAMILIES, SD15, SDXL, UnknownFamilyError, detect_family


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
def test_family_pipelines_are_diffusers_classes_with_one_encoder_per_dim(family):
    pipelines = (family.txt2img_pipeline, family.img2img_pipeline, family.inpaint_pipeline)
    for name in pipelines:
        assert hasattr(diffusers, name), name
    parameters = inspect.signature(getattr(diffusers, family.txt2img_pipeline)).parameters
    encoders = [name for name in parameters if name.startswith("text_encoder")]
    assert len(encoders) == len(family.text_encoder_dims)
    assert len(family.pti_keys) == len(family.embedding_keys) == len(encoders)
    assert len(family.kohya_text_encoder_prefixes) == len(encoders)
    assert (family.default_refiner_model is None) == (family.refiner_time_ids is None)


def test_detect_family_reads_the_tiny_sdxl_configs(tiny_models):
    assert detect_family(tiny_models["base"]) is SDXL
    assert detect_family(tiny_models["refiner"]) is SDXL


@pytest.mark.parametrize(
    "pipeline_class", ["StableDiffusionPipeline", "StableDiffusionInpaintPipeline"]
)
def test_detect_family_reads_the_pipeline_class_not_the_name(tmp_path, pipeline_class):
    folder = tmp_path / "sdxl-looking-name"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline_class}))
    assert detect_family(folder) is SD15


@pytest.mark.parametrize(("addition_embed_type", "family"), [("text_time", SDXL), (None, SD15)])
def test_detect_family_falls_back_to_the_unet_config(tmp_path, addition_embed_type, family):
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "MyCustomPipeline"}))
    config = {"_class_name": "UNet2DConditionModel", "addition_embed_type": addition_embed_type}
    (tmp_path / "unet" / "config.json").write_text(json.dumps(config))
    assert detect_family(tmp_path) is family


def test_detect_family_names_the_folder_when_it_cannot_tell(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(UnknownFamilyError, match="FluxPipeline"):
        detect_family(tmp_path)
