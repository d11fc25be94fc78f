"""LoRA files in LyCORIS's formats (LoKr, LoHa) and DoRA (kohya's `dora_scale`, peft's
`lora_magnitude_vector`), with the names Civitai files use (kohya, SGM, BFL, LyCORIS): each
layer changes as its format's formula says, stacked files add up, the base comes back bit for
bit, and a key that cannot be placed refuses the whole file."""

from __future__ import annotations

import base64

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import save, save_file

from generation.lora import LoraFormatError
from generation.switcher import Selection
from tests.lycoris_files import (
    Layer,
    assert_base,
    assert_changed_as_formula,
    changed_weight,
    file_tensors,
    loha_layer,
    lokr_layer,
    lora_layer,
    snapshot,
)
from tests.predict_helpers import one_torch_thread, predict_arrays, same, tiny_predictor
from tests.trained_bundles import write_full_finetune_bundle, write_lora_bundle

# Layers of the tiny SDXL, by the names real SDXL files give them: kohya's SGM paths,
# diffusers paths (`lora_unet_down_blocks_…`), SimpleTuner's `lycoris_` ones, CLIP's.
ATTENTION = "down_blocks.1.attentions.0.transformer_blocks.0"
SGM_ATTENTION = "lora_unet_input_blocks_4_1_transformer_blocks_0"
MID = "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0"  # 64 x 64
SGM_MID = "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_out_0"
CONV1, SGM_CONV1 = "down_blocks.0.resnets.0.conv1", "lora_unet_input_blocks_1_0_in_layers_2"
CONV2, SGM_CONV2 = "down_blocks.0.resnets.0.conv2", "lora_unet_input_blocks_1_0_out_layers_3"
CROSS = "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k"  # 64 x 96
SGM_CROSS = "lora_unet_output_blocks_1_1_transformer_blocks_0_attn2_to_k"
TE1 = "encoder.layers.0.self_attn"  # CLIPTextModel (transformers 5 has no text_model.)
TE2_FC1 = "text_model.encoder.layers.1.mlp.fc1"  # 128 x 64
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def sdxl_layers(kind: str, seed: int) -> list[Layer]:
    g = torch.Generator().manual_seed(seed)
    flat = f"lora_unet_{ATTENTION.replace('.', '_')}"
    if kind == "lokr":
        return [
            lokr_layer(
                f"{SGM_ATTENTION}_attn1_to_q",
                "unet",
                (f"{ATTENTION}.attn1.to_q",),
                (32, 32),
                g,
                w1="whole",
                w2="ab",
                alpha=1.5,
            ),
            # Both factors decomposed (ranks 3 and 4): alpha divides by w2's.
            lokr_layer(SGM_CROSS, "unet", (CROSS,), (64, 96), g, w1="ab", w2="ab", rank=4, alpha=3),
            lokr_layer(
                f"{flat}_ff_net_0_proj",
                "unet",
                (f"{ATTENTION}.ff.net.0.proj",),
                (256, 32),
                g,
                w1="ab",
                w2="whole",
                alpha=2.0,
            ),
            lokr_layer(
                SGM_CONV1, "unet", (CONV1,), (32, 32, 3, 3), g, w1="whole", w2="tucker", alpha=2.0
            ),
            lokr_layer(
                SGM_CONV2, "unet", (CONV2,), (32, 32, 3, 3), g, w1="whole", w2="ab", alpha=1.0
            ),
            # Both factors whole: LyCORIS applies no alpha.
            lokr_layer(
                "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                "text_encoder",
                (f"{TE1}.q_proj",),
                (32, 32),
                g,
                w1="whole",
                w2="whole",
                alpha=7.0,
            ),
            lokr_layer(
                "lora_te2_text_model_encoder_layers_1_mlp_fc1",
                "text_encoder_2",
                (TE2_FC1,),
                (128, 64),
                g,
                w1="whole",
                w2="ab",
            ),
        ]
    if kind == "loha":
        return [
            loha_layer(
                f"lycoris_{ATTENTION.replace('.', '_')}_attn1_to_k",
                "unet",
                (f"{ATTENTION}.attn1.to_k",),
                (32, 32),
                g,
                alpha=2.0,
            ),
            loha_layer(SGM_CONV1, "unet", (CONV1,), (32, 32, 3, 3), g, tucker=True, alpha=1.5),
            loha_layer(
                "lora_te1_text_model_encoder_layers_0_self_attn_k_proj",
                "text_encoder",
                (f"{TE1}.k_proj",),
                (32, 32),
                g,
            ),
        ]
    return [  # DoRA on LoRA (both axes, a convolution) and on LoKr
        lora_layer(
            f"{SGM_ATTENTION}_attn1_to_v",
            "unet",
            (f"{ATTENTION}.attn1.to_v",),
            (32, 32),
            g,
            alpha=2.0,
            dora="out",
        ),
        lora_layer(SGM_MID, "unet", (MID,), (64, 64), g, alpha=8.0, dora="in"),
        lora_layer(SGM_CONV2, "unet", (CONV2,), (32, 32, 3, 3), g, alpha=2.0, dora="out"),
        lora_layer(
            "lora_te2_text_model_encoder_layers_1_mlp_fc1",
            "text_encoder_2",
            (TE2_FC1,),
            (128, 64),
            g,
            dora="in",
        ),
        _with_dora(
            lokr_layer(
                f"{flat}_ff_net_0_proj",
                "unet",
                (f"{ATTENTION}.ff.net.0.proj",),
                (256, 32),
                g,
                w1="whole",
                w2="ab",
                alpha=3.0,
            ),
            g,
        ),
    ]


def _with_dora(layer: Layer, generator) -> Layer:
    rows = layer.parts["lokr_w1"].shape[0] * layer.parts["lokr_w2_a"].shape[0]
    layer.parts["dora_scale"] = 1 + torch.rand(rows, 1, generator=generator)
    return layer


@pytest.fixture(scope="module")
def threads():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def predictor(model_cache, threads):
    return tiny_predictor(model_cache)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("lycoris")
    made = {}
    for seed, kind in enumerate(("lokr", "loha", "dora")):
        layers = sdxl_layers(kind, seed)
        save_file(file_tensors(layers), root / f"{kind}.safetensors")
        made[kind] = (root / f"{kind}.safetensors", layers)
    made["A"] = write_lora_bundle(tiny_models["base"], root / "A", seed=1)
    made["F"] = write_full_finetune_bundle(tiny_models["base"], root / "F", seed=4)
    return made


def components(predictor) -> dict[str, torch.nn.Module]:
    return predictor.engine.switcher.components


@pytest.mark.parametrize("kind", ["lokr", "loha", "dora"])
def test_each_format_changes_its_layers_by_its_formula_and_the_base_comes_back(
    predictor, files, kind
):
    engine, (path, layers) = predictor.engine, files[kind]
    models = components(predictor)
    engine.switcher.activate(Selection())
    before = snapshot(models)
    stacked = engine.weights_cache.get(path).lora
    for strength in (1.0, 0.6, -0.5):
        engine.switcher.activate(Selection(stacked=((stacked, strength),)))
        assert_changed_as_formula(models, [(x, strength) for x in layers], before)
    main = engine.weights_cache.get(path)  # as the main weights, at lora_scale
    engine.switcher.activate(Selection(main, 0.8))
    assert_changed_as_formula(models, [(x, 0.8) for x in layers], before)
    engine.switcher.activate(Selection())
    assert_base(models, before)


def test_stacked_files_add_up_over_a_full_fine_tune_and_leave_it_exactly(predictor, files):
    engine, models = predictor.engine, components(predictor)
    engine.switcher.activate(Selection())
    base = snapshot(models)
    fine_tune = engine.weights_cache.get(files["F"])
    engine.switcher.activate(Selection(fine_tune))
    tuned = snapshot(models)
    lokr, loha = (engine.weights_cache.get(files[k][0]).lora for k in ("lokr", "loha"))
    main_lora = engine.weights_cache.get(files["A"]).lora  # low-rank: held in slots
    stacked = ((lokr, 0.5), (main_lora, 1.0), (loha, 1.5))
    engine.switcher.activate(Selection(fine_tune, 1.0, stacked))
    # Both files change conv1: their changes, each against the fine-tuned weight, add up.
    applied = [(x, 0.5) for x in files["lokr"][1]] + [(x, 1.5) for x in files["loha"][1]]
    assert_changed_as_formula(models, applied, tuned)
    engine.switcher.activate(Selection(fine_tune))
    assert_base(models, tuned)
    engine.switcher.activate(Selection())
    assert_base(models, base)


def test_a_dora_file_differs_from_the_same_file_without_its_dora_scale(predictor, files, tmp_path):
    path, layers = files["dora"]
    plain = tmp_path / "plain.safetensors"
    tensors = file_tensors(layers)
    save_file({k: v for k, v in tensors.items() if not k.endswith(".dora_scale")}, plain)
    with_dora = predict_arrays(predictor, extra_lora=path)
    assert not same(with_dora, predict_arrays(predictor, extra_lora=plain))
    assert not same(with_dora, predict_arrays(predictor))


def test_peft_dora_files_apply_as_peft_merges_them(predictor, tiny_models, tmp_path):
    """diffusers' DoRA layout (`lora_magnitude_vector`, written by peft): the predictor's
    weights match the formula, and the formula matches peft's own merge."""
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models["base"])
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_out.0"], use_dora=True)
    text_config = LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"], use_dora=True)
    generator = torch.Generator().manual_seed(3)
    parts = {"unet": (pipe.unet, config), "text_encoder": (pipe.text_encoder, text_config)}
    tensors = {}
    for name, (model, adapter) in parts.items():
        model.add_adapter(adapter)
        with torch.no_grad():  # a trained look: B non-zero, magnitudes off the weight norms
            for key, parameter in model.named_parameters():
                if "lora_B" in key or "lora_magnitude" in key:
                    parameter.add_(torch.rand(parameter.shape, generator=generator))
        tensors[name] = get_peft_model_state_dict(model)
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path,
        weight_name="dora.safetensors",
        unet_lora_layers=tensors["unet"],
        text_encoder_lora_layers=tensors["text_encoder"],
        unet_lora_adapter_metadata=config.to_dict(),
        text_encoder_lora_adapter_metadata=text_config.to_dict(),
    )
    engine, models = predictor.engine, components(predictor)
    engine.switcher.activate(Selection())
    before = snapshot(models)
    engine.switcher.activate(Selection(engine.weights_cache.get(tmp_path / "dora.safetensors")))
    layers = []
    for name, (model, adapter) in parts.items():
        for key in [k for k in tensors[name] if k.endswith(".lora_magnitude_vector")]:
            module = key.removesuffix(".lora_magnitude_vector")
            lora = {
                "lora_down.weight": tensors[name][f"{module}.lora_A.weight"],
                "lora_up.weight": tensors[name][f"{module}.lora_B.weight"],
                "alpha": torch.tensor(float(adapter.lora_alpha)),
                "dora_scale": tensors[name][key],  # one per output row
            }
            layer = Layer(module, name, (module,), "lora", lora)
            layers.append(layer)
            peft_layer = model.get_submodule(module)
            # peft's DoRA merge, on its float32 base weight: within the formula's bound
            exact, bound = changed_weight(layer, peft_layer.get_base_layer().weight, 1.0)
            peft_layer.merge()
            merged = peft_layer.get_base_layer().weight.double()
            assert ((merged - exact).abs() <= bound).all(), module
    assert {layer.component for layer in layers} == set(parts)
    assert_changed_as_formula(models, [(x, 1.0) for x in layers], before)
    engine.switcher.activate(Selection())
    assert_base(models, before)


def _edited(files, kind, edit) -> dict[str, torch.Tensor]:
    path, layers = files[kind]
    return edit(file_tensors(layers))


def _renamed(old: str, new: str):
    return lambda tensors: {k.replace(old, new): v for k, v in tensors.items()}


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        (
            "lokr",
            _renamed("input_blocks_4_1", "input_blocks_99_1"),
            r"cannot be placed: .*input_blocks_99_1_transformer_blocks_0_attn1_to_q\.lokr_w1",
        ),
        ("loha", _renamed("hada_t2", "hada_t3"), r"cannot be placed: .*in_layers_2\.hada_t3"),
        (
            "lokr",
            lambda t: {k: v for k, v in t.items() if not k.endswith("ff_net_0_proj.lokr_w2")},
            r"ff_net_0_proj\.alpha.*ff_net_0_proj\.lokr_w1_a",
        ),
        ("dora", lambda t: {**t, f"{SGM_MID}.lokr_w1": torch.ones(2, 2)}, r"attn1_to_out_0\."),
        (
            "lokr",
            lambda t: {**t, f"{SGM_CONV2}.lokr_w1": torch.ones(4, 4)},
            r"of unet\.down_blocks\.0\.resnets\.0\.conv2 changes a weight of 64 rows.*32x32x3x3",
        ),
        (
            "dora",
            lambda t: {**t, f"{SGM_MID}.dora_scale": torch.ones(1, 32)},
            r"DoRA magnitude of 32 entries, not 64",
        ),
    ],
)
def test_keys_that_cannot_be_placed_refuse_the_whole_file(
    predictor, files, tmp_path, kind, edit, message
):
    engine, models = predictor.engine, components(predictor)
    engine.switcher.activate(Selection())
    before = snapshot(models)
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(save(_edited(files, kind, edit)))
    for name in ("replicate_weights", "extra_lora"):
        with pytest.raises(LoraFormatError, match=message):
            predict_arrays(predictor, **{name: edited})
        assert_base(models, before)


def test_stacked_lycoris_files_come_by_url_and_data_uri(predictor, files, file_server):
    lokr_path, loha_path, dora_path = (files[k][0] for k in ("lokr", "loha", "dora"))
    bundle = files["A"]
    main_only = predict_arrays(predictor, replicate_weights=bundle)
    loras = {
        file_server.add("/civitai/lokr.safetensors", lokr_path): 0.5,
        file_server.add("/civitai/loha.safetensors", loha_path): 1.2,
    }
    dora_uri = "data:;base64," + base64.b64encode(dora_path.read_bytes()).decode()
    dora_url = file_server.add("/civitai/dora.safetensors", dora_path)
    outputs = [
        predict_arrays(
            predictor,
            replicate_weights=bundle,
            extra_lora=dora,
            extra_lora_scale=0.7,
            loras=loras,
        )
        for dora in (dora_path, dora_uri, dora_url)  # the operator's path, a client's files
    ]
    assert not same(outputs[0], main_only)
    assert same(outputs[1], outputs[0]) and same(outputs[2], outputs[0])
    assert same(predict_arrays(predictor, replicate_weights=bundle), main_only)


def test_sd15_kohya_lycoris_names(model_cache, tiny_sd15_model, tmp_path):
    with one_torch_thread():
        predictor = tiny_predictor(model_cache, base_model="tiny-sd15")
        g = torch.Generator().manual_seed(5)
        attention = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
        layers = [
            lokr_layer(
                f"lora_unet_{attention.replace('.', '_')}_to_q",
                "unet",
                (f"{attention}.to_q",),
                (32, 32),
                g,
                w1="whole",
                w2="ab",
                alpha=2.0,
            ),
            loha_layer(
                "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
                "text_encoder",
                (f"{TE1}.q_proj",),
                (32, 32),
                g,
                alpha=1.0,
            ),
            lora_layer(
                "lora_te_text_model_encoder_layers_1_self_attn_v_proj",
                "text_encoder",
                (TE1.replace("0", "1") + ".v_proj",),
                (32, 32),
                g,
                dora="in",
            ),
        ]
        save_file(file_tensors(layers), tmp_path / "sd15.safetensors")
        engine, models = predictor.engine, components(predictor)
        before = snapshot(models)
        engine.switcher.activate(Selection(engine.weights_cache.get(tmp_path / "sd15.safetensors")))
        assert_changed_as_formula(models, [(x, 1.0) for x in layers], before)
        engine.switcher.activate(Selection())
        assert_base(models, before)
