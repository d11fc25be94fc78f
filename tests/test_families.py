"""The family facts table and detecting a model's family from its config."""

import inspect
import json

import diffusers
import pytest
import transformers

from families import (
    FAMILIES,
    SD15,
    SDXL,
    UnknownFamilyError,
    detect_family,
    family_from_weight_names,
)


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
def test_family_pipelines_are_diffusers_classes_with_one_encoder_per_dim(family):
    pipelines = (family.txt2img_pipeline, family.img2img_pipeline, family.inpaint_pipeline)
    for name in pipelines:
        assert hasattr(diffusers, name), name
    parameters = inspect.signature(getattr(diffusers, family.txt2img_pipeline)).parameters
    encoders = [name for name in parameters if name.startswith("text_encoder")]
    assert len(encoders) == len(family.text_encoder_dims)
    # Trained tokens: one table per text encoder, or none for a family without them.
    assert len(family.pti_keys) == len(family.embedding_keys) in (0, len(encoders))
    assert parameters.keys() >= {*family.text_encoder_names, *family.tokenizer_names}
    assert all(hasattr(transformers, name) for name in family.text_encoder_classes)
    assert len(family.tokenizer_classes) == len(encoders)
    assert all(hasattr(transformers, name) for name in family.tokenizer_classes)
    assert hasattr(diffusers, family.denoiser_class) and family.denoiser in parameters
    assert len(family.kohya_text_encoder_prefixes) == len(encoders)


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
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusion3Pipeline"})
    )
    with pytest.raises(UnknownFamilyError, match="StableDiffusion3Pipeline"):
        detect_family(tmp_path)


# One tensor name of each kind of file users bring, as real SDXL / SD 1.5 files name them.
WEIGHT_NAMES = [
    (["unet.down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.lora_A.weight"], SDXL),
    (["text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"], SDXL),
    (["lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q.lora_down.weight"], SDXL),
    (
        ["down_blocks.2.attentions.1.transformer_blocks.1.attn1.processor.to_q_lora.down.weight"],
        SDXL,
    ),
    (["add_embedding.linear_1.weight", "conv_in.weight"], SDXL),  # a full UNet
    (["text_encoders_0", "text_encoders_1"], SDXL),
    (["clip_l", "clip_g"], SDXL),
    (["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"], SD15),
    (["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"], SD15),
    (["lora_unet_input_blocks_1_1_proj_in.lora_down.weight"], SD15),
    (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], SD15),
    (["text_encoders_0"], SD15),
    (["emb_params"], SD15),
    (["unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"], None),
    (["lora_te_x.alpha", "lora_te2_x.alpha"], None),  # contradicts itself
]


@pytest.mark.parametrize(("names", "family"), WEIGHT_NAMES)
def test_trained_weights_tell_their_family_by_tensor_names(names, family):
    assert family_from_weight_names(names) is family
