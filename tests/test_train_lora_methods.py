"""lora_method: DoRA and LoKr train on the tiny SDXL (UNet and both text encoders), resume
exactly, and land in the tarball as files that the predictor applies as the trained peft model
computes them, that stock diffusers loads, and whose kohya keys are the names ComfyUI loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file

from families import SDXL
from formats.bundle import CHECKPOINTS_DIR, LORA_FILE, LORA_KOHYA_FILE
from generation.switcher import Selection
from tests.lycoris_files import Layer, cast_rounding, changed_weight, snapshot
from tests.predict_helpers import one_torch_thread, tiny_predictor
from tests.train_helpers import make_dataset, small_config
from training.bundle import write_bundle
from training.components import add_lora
from training.loop import STATE_DIR, run_training
from weights.archive import unpack_archive
from weights.runtime import pick_runtime
from weights.settings import TINY

CPU = pick_runtime("cpu")
# Rank 2 on the tiny model's 32-wide layers makes peft decompose LoKr's w2 (w2_a @ w2_b);
# alpha != rank everywhere, so a scale applied twice or not at all shows.
SETTINGS = {
    "dora": dict(lora_method="dora", lora_rank=4, lora_alpha=8.0),
    "lokr": dict(lora_method="lokr", lora_rank=2, lora_alpha=3.0),
}
ENCODERS = ("text_encoder", "text_encoder_2")
# The parts ComfyUI's adapters read (comfy/weight_adapter/lora.py, lokr.py; comfy/lora.py reads
# `.alpha` and `.dora_scale` for every adapter).
COMFYUI_PARTS = {
    "dora": {"lora_up.weight", "lora_down.weight", "alpha", "dora_scale"},
    "lokr": {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"},
}
# comfy/lora.py LORA_CLIP_MAP: the CLIP layers ComfyUI maps under kohya's text-encoder names.
COMFYUI_CLIP_MAP = {
    "mlp.fc1": "mlp_fc1",
    "mlp.fc2": "mlp_fc2",
    "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.q_proj": "self_attn_q_proj",
    "self_attn.v_proj": "self_attn_v_proj",
    "self_attn.out_proj": "self_attn_out_proj",
}


@pytest.fixture(scope="module", autouse=True)
def threads():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("dataset"))


def method_config(method: str, **overrides):
    settings = dict(max_train_steps=4, checkpointing_steps=2, ti_lr=0.0, lora_lr=2e-2)
    settings |= dict(train_text_encoder=True, text_encoder_lr=2e-2)
    return small_config(**{**settings, **SETTINGS[method], **overrides})


@pytest.fixture(scope="module", params=["dora", "lokr"])
def trained(request, dataset, tiny_models, tmp_path_factory):
    """(method, the run's result, its unpacked tarball)."""
    root = tmp_path_factory.mktemp(request.param)
    result = run_training(
        method_config(request.param), dataset, tiny_models["base"], root / "run", CPU
    )
    tar = write_bundle(result, root / "trained_model.tar", TINY)
    unpack_archive(tar, root / "bundle")
    return request.param, result, root / "bundle"


@pytest.fixture(scope="module")
def predictor(model_cache, threads):
    return tiny_predictor(model_cache)


def test_each_method_resumes_exactly(trained, dataset, tiny_models, tmp_path):
    method, result, _ = trained
    checkpoint = result.work_dir / CHECKPOINTS_DIR / "checkpoint-000002"
    resumed = run_training(
        method_config(method), dataset, tiny_models["base"], tmp_path, CPU, resume_from=checkpoint
    )
    whole = load_file(str(result.weights_dir / LORA_FILE))
    again = load_file(str(resumed.weights_dir / LORA_FILE))
    assert again.keys() == whole.keys()
    for key, value in whole.items():
        assert torch.equal(again[key], value), f"{method}: {key} differs after resume"


def trained_peft_models(method: str, checkpoint: Path, base: Path) -> dict[str, torch.nn.Module]:
    """The UNet and text encoders with the adapters as training left them at `checkpoint`:
    the run's own peft adapters, their parameters from the checkpoint's training state."""
    pipe = StableDiffusionXLPipeline.from_pretrained(base)
    config = method_config(method)
    models = {"unet": pipe.unet, **{name: getattr(pipe, name) for name in ENCODERS}}
    for name, model in models.items():
        targets = (
            SDXL.lora_target_modules if name == "unet" else SDXL.text_encoder_lora_target_modules
        )
        add_lora(model, config.lora_rank, config.effective_lora_alpha, targets, method)
    state = load_file(str(checkpoint / STATE_DIR / "parameters.safetensors"))
    with torch.no_grad():
        for name, model in models.items():
            for key, parameter in model.named_parameters():
                if f"{name}.{key}" in state:
                    parameter.copy_(state[f"{name}.{key}"])
    return models


def reference_layer(method: str, component: str, module: str, layer, alpha: float) -> Layer:
    """The trained adapter of one peft layer as a file layer of its format, with peft's
    scale (alpha / r, for LoKr folded into w1) for the reference formula."""
    if method == "dora":
        parts = {
            "lora_down.weight": layer.lora_A["default"].weight.detach(),
            "lora_up.weight": layer.lora_B["default"].weight.detach(),
            "alpha": torch.tensor(alpha),
            "dora_scale": layer.lora_magnitude_vector["default"].weight.detach(),
        }
        return Layer(module, component, (module,), "lora", parts)
    scale = layer.scaling["default"]
    parts = {}
    for part in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"):
        if "default" in getattr(layer, part):
            value = getattr(layer, part)["default"].detach()
            parts[part] = value * scale if part in ("lokr_w1", "lokr_w1_a") else value
    return Layer(module, component, (module,), "lokr", parts)


def test_the_predictor_applies_the_saved_files_as_the_trained_model_computes(
    trained, predictor, tiny_models
):
    """At the step-2 checkpoint: the predictor's weights from its lora.safetensors and from its
    lora_kohya.safetensors, and peft's merge of the trained adapters, all within the float32
    bound of the format's formula computed in float64 from the trained parameters."""
    method, result, _ = trained
    checkpoint = result.work_dir / CHECKPOINTS_DIR / "checkpoint-000002"
    peft_models = trained_peft_models(method, checkpoint, tiny_models["base"])
    engine = predictor.engine
    engine.switcher.activate(Selection())
    before = snapshot(engine.switcher.components)
    alpha = method_config(method).effective_lora_alpha
    references = []  # (reference, its formula on the predictor's base weight)
    for component, model in peft_models.items():
        for module, layer in model.named_modules():
            if isinstance(layer, BaseTunerLayer):
                reference = reference_layer(method, component, module, layer, alpha)
                weight = before[f"{component}.{module}.weight"]  # bf16 on a GPU
                references.append((reference, *changed_weight(reference, weight, 1.0)))
                # peft's own merge of the trained adapter, on its float32 base weight
                exact, bound = changed_weight(reference, layer.get_base_layer().weight, 1.0)
                layer.merge()
                merged = layer.get_base_layer().weight.double()
                assert ((merged - exact).abs() <= bound).all(), f"peft: {component}.{module}"
    assert {r.component for r, _, _ in references} == {"unet", *ENCODERS}
    for file in (LORA_FILE, LORA_KOHYA_FILE):
        engine.switcher.activate(Selection(engine.weights_cache.get(checkpoint / file)))
        after = snapshot(engine.switcher.components)
        changed = set()
        for reference, exact, bound in references:
            key = f"{reference.component}.{reference.modules[0]}.weight"
            error = (after[key].double() - exact).abs()
            assert (error <= bound + cast_rounding(after[key].dtype, exact)).all(), f"{file}: {key}"
            if not torch.equal(after[key], before[key]):
                changed.add(reference.component)
        # The text encoders' last layers get no gradient (SDXL reads the penultimate one).
        assert changed == {"unet", *ENCODERS}
    engine.switcher.activate(Selection())
    restored = snapshot(engine.switcher.components)
    assert all(torch.equal(restored[key], value) for key, value in before.items())


def test_the_kohya_file_has_the_names_comfyui_loads(trained, tiny_models):
    method, _, bundle = trained
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models["base"])
    # comfy/lora.py model_lora_keys_unet: `lora_unet_` + each diffusers UNet key, `_` for `.`;
    # model_lora_keys_clip: `lora_te1_` / `lora_te2_` + `text_model_encoder_layers_{b}_` + a
    # LORA_CLIP_MAP layer.
    names = {
        f"lora_unet_{name.replace('.', '_')}": module
        for name, module in pipe.unet.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
    }
    for prefix, encoder in zip(("lora_te1", "lora_te2"), ENCODERS, strict=True):
        model = getattr(pipe, encoder)
        layers = getattr(model, "text_model", model).encoder.layers
        for index, layer in enumerate(layers):
            for path, clip_layer in COMFYUI_CLIP_MAP.items():
                kohya = f"{prefix}_text_model_encoder_layers_{index}_{clip_layer}"
                names[kohya] = layer.get_submodule(path)
    kohya = load_file(str(bundle / LORA_KOHYA_FILE))
    modules = {}
    for key in kohya:
        module, _, part = key.partition(".")
        assert module in names, f"{key}: not a name ComfyUI maps"
        assert part in COMFYUI_PARTS[method], f"{key}: not a part ComfyUI reads"
        modules.setdefault(module, set()).add(part)
    assert {m.split("_")[1] for m in modules} == {"unet", "te1", "te2"}
    for module, parts in modules.items():
        assert "alpha" in parts
        if method == "dora":
            # ComfyUI and LyCORIS rescale each output row when dora_scale is [out, 1].
            rows = names[module].weight.shape[0]
            assert kohya[f"{module}.dora_scale"].shape == (rows, 1)
        else:
            assert {"lokr_w2_a", "lokr_w2_b"} <= parts, "peft decomposes w2 at rank 2"


def test_stock_diffusers_loads_lora_safetensors(trained, tiny_models):
    """diffusers 0.42: `load_lora_weights` takes a DoRA (as DoRA layers, scale alpha/r from
    the file's metadata); a LoKr loads into the UNet with `load_lora_adapter`, at scale 1 (the
    scale is folded into w1)."""
    method, _, bundle = trained
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models["base"])
    module = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    if method == "dora":
        pipe.load_lora_weights(bundle, weight_name=LORA_FILE)
        layer = pipe.unet.get_submodule(module)
        assert layer.use_dora[layer.active_adapters[0]]
        assert layer.scaling[layer.active_adapters[0]] == 2.0  # alpha 8 / rank 4
        text_layer = pipe.text_encoder.get_submodule("encoder.layers.0.self_attn.q_proj")
        assert all(text_layer.use_dora.values())
    else:
        with pytest.raises(ValueError, match="Invalid LoRA checkpoint"):
            pipe.load_lora_weights(bundle, weight_name=LORA_FILE)
        pipe.unet.load_lora_adapter(bundle, weight_name=LORA_FILE, prefix="unet")
        layer = pipe.unet.get_submodule(module)
        assert layer.scaling[layer.active_adapters[0]] == 1.0
        assert len(layer.lokr_w2_a) == 1  # peft built the file's decomposed w2
