"""What every registered family must do, written once and run for each of `FAMILIES`: a new
family gets these tests by registering (docs/adding-a-family.md).

On the family's tiny model, a LoRA trained on a red square:
- learns it: stock diffusers, with the tarball's `lora.safetensors`, draws nearer the training
  images than the base;
- resumes bit-exactly from a checkpoint;
- its file in other tools' names (`lora_kohya.safetensors`) names the model's own layers;
- the generation modes of its container work on its base, with the weights;
- its container's schema offers what the family takes (negative prompt, named schedulers);
- every other container refuses its weights, naming the family's container.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from families import FAMILIES, ModelFamily
from formats.bundle import CHECKPOINTS_DIR, LORA_FILE, LORA_KOHYA_FILE
from generation.layer_names import LayerNames
from serving.cli import declared_defaults
from serving.containers import CONTAINERS, load_entry
from serving.inputs import tiny_profile_defaults
from serving.schema import SCHEMAS_DIR
from tests.conftest import tiny_variables
from tests.predict_helpers import one_torch_thread
from tests.train_helpers import make_dataset, small_config
from training.bundle import write_bundle
from training.dataset import load_pixels
from training.loop import TrainingResult, run_training
from weights.embedded.tiny import ensure_tiny_model
from weights.runtime import pick_runtime
from weights.trained_files import WrongFamilyError

CPU = pick_runtime("cpu")
STEPS = 40
SUBJECT = "a photo of TOK, a red square"


@pytest.fixture(scope="module", autouse=True)
def threads():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module", params=list(FAMILIES.values()), ids=lambda f: f.name)
def family(request) -> ModelFamily:
    return request.param


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("dataset"), masks=False)


@dataclass(frozen=True)
class Trained:
    family: ModelFamily
    base: Path  # the tiny base's diffusers folder
    result: TrainingResult
    config: object

    @property
    def weights(self) -> Path:
        return self.result.weights_dir


@pytest.fixture(scope="module")
def trained(family, dataset, model_cache, tmp_path_factory) -> Trained:
    """A LoRA trained on the red square (no new tokens: every family trains those), with a
    checkpoint half-way, and its tarball."""
    base = ensure_tiny_model("base", model_cache, family=family.name)
    config = small_config(
        ti_lr=0.0, lora_lr=3e-2, max_train_steps=STEPS, checkpointing_steps=STEPS // 2
    )
    work = tmp_path_factory.mktemp(f"{family.name}-run")
    result = run_training(config, dataset, base, work / "run", CPU, family=family)
    write_bundle(result, work / "trained_model.tar", family.tiny_model)
    return Trained(family, base, result, config)


@pytest.fixture(scope="module")
def predictors(model_cache, tiny_models):
    """Each container's predictor on a tiny base of a given family, made once when asked."""
    made: dict[tuple[str, str], object] = {}

    def predictor(container: str, family: ModelFamily):
        if (container, family.name) not in made:
            with pytest.MonkeyPatch.context() as env:
                for variable, value in tiny_variables(model_cache).items():
                    env.setenv(variable, value)
                env.setenv("BASE_MODEL", family.tiny_model)
                instance = load_entry(CONTAINERS[container].predictor)()
                instance.setup(None)
            made[container, family.name] = instance
        return made[container, family.name]

    return predictor


def predict(predictor, container: str, **inputs) -> list[np.ndarray]:
    """The container's predict() with its declared defaults, made small and fast."""
    fast = {**tiny_profile_defaults(CONTAINERS[container].request), "num_inference_steps": 2}
    defaults = declared_defaults(CONTAINERS[container].predictor)
    exact = {"apply_watermark": False, "disable_safety_checker": True, "output_format": "png"}
    exact = {name: value for name, value in exact.items() if name in defaults}  # lossless
    request = {**defaults, **fast, **exact, "seed": 3, **inputs}
    return [np.asarray(Image.open(path)).astype(int) for path in predictor.predict(**request)]


def stock_pipeline(trained: Trained, lora_file: str | None = None):
    pipeline = getattr(diffusers, trained.family.txt2img_pipeline).from_pretrained(trained.base)
    pipeline.set_progress_bar_config(disable=True)
    if lora_file:
        pipeline.load_lora_weights(trained.weights, weight_name=lora_file)
    return pipeline


def render(pipeline, seed: int) -> torch.Tensor:
    """One 64x64 image of the subject prompt, [3, 64, 64] in [0, 1]."""
    return pipeline(
        SUBJECT,
        width=64,
        height=64,
        num_inference_steps=8,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    ).images[0]


def training_loss(family: ModelFamily, pipeline, dataset: Path, count: int = 16) -> float:
    """The training objective on the training images with fixed draws (noise, times), through
    the stock pipeline's components: two models compare without the per-step noise."""
    pixels = torch.stack([load_pixels(p) for p in sorted(dataset.glob("*.src.png"))])
    vae = pipeline.vae
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean
    latents = family.training_latents(vae)(latents)
    latents = latents[torch.arange(count) % len(latents)]
    generator = torch.Generator().manual_seed(123)
    noise = torch.randn(latents.shape, generator=generator)
    if family.objective == "denoising":  # the noise at DDPM timesteps
        time = torch.randint(0, 1000, (count,), generator=generator)
        schedule = diffusers.DDPMScheduler.from_config(pipeline.scheduler.config)
        noisy, target = schedule.add_noise(latents, noise, time), noise
    else:  # flow matching: noise - latents along the straight path, at sigmas
        time = torch.sigmoid(torch.randn((count,), generator=generator))
        t = time.view(-1, 1, 1, 1)
        noisy, target = (1 - t) * latents + t * noise, noise - latents
    encoders = [getattr(pipeline, name) for name in family.text_encoder_names]
    tokenizers = [getattr(pipeline, name) for name in family.tokenizer_names]
    with torch.no_grad():
        conditioning = family.encode_prompt(encoders, tokenizers, [SUBJECT] * count, "cpu")
        denoiser = getattr(pipeline, family.denoiser)
        prediction = family.denoise(denoiser, noisy, time, conditioning, [(64, 64)] * count)
    return float((prediction - target).pow(2).mean())


def test_it_learns_the_training_images_in_stock_diffusers(trained, dataset):
    family = trained.family
    base = training_loss(family, stock_pipeline(trained), dataset)
    tuned = training_loss(family, stock_pipeline(trained, LORA_FILE), dataset)
    # Measured tuned / base: SDXL 0.90, SD 1.5 0.78, FLUX.1 0.77, FLUX.2 [klein] 0.76 (a LoRA
    # that gets no gradient, or a file that does not load, stays at 1.00).
    assert tuned < 0.95 * base, (base, tuned)


def test_it_resumes_from_a_checkpoint_bit_exactly(trained, dataset, tmp_path):
    checkpoint = trained.result.work_dir / CHECKPOINTS_DIR / f"checkpoint-{STEPS // 2:06d}"
    resumed = run_training(
        trained.config, dataset, trained.base, tmp_path, CPU, checkpoint, family=trained.family
    )
    straight = load_file(str(trained.weights / LORA_FILE))
    again = load_file(str(resumed.weights_dir / LORA_FILE))
    assert straight.keys() == again.keys()
    assert all(torch.equal(straight[key], again[key]) for key in straight)


def test_its_file_for_other_tools_names_the_trained_layers(trained):
    """Every layer `lora_kohya.safetensors` names is one of the model's, as ComfyUI's key
    tables resolve names (generation/layer_names.py reads them the same way): the layer or
    fused layers it stands for, with as many rows as its LoRA's up matrix. (That the files
    change those layers alike: tests/test_train_learning.py, tests/test_flux.py.)"""
    family = trained.family
    pipeline = stock_pipeline(trained)
    components = {name: getattr(pipeline, name) for name in (family.denoiser,)}
    names = LayerNames(components, family)
    kohya = load_file(str(trained.weights / LORA_KOHYA_FILE))
    ups = {key.split(".")[0]: value for key, value in kohya.items() if ".lora_up." in key}
    assert ups, "no LoRA layers in the file for other tools"
    for name, up in ups.items():
        target = names.find(name)
        assert target is not None, f"{name}: not a name ComfyUI maps"
        model = components[target.component]
        rows = sum(model.get_submodule(m).weight.shape[0] for m in target.modules)
        assert up.shape[0] == rows, name


def test_its_containers_generation_modes_work_with_its_weights(trained, predictors, tmp_path):
    family = trained.family
    predictor = predictors(family.container, family)
    weights = {"replicate_weights": trained.weights, "prompt": SUBJECT}
    (plain,) = predict(predictor, family.container, **weights)
    height, width, _ = plain.shape
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.fromarray(np.full((height, width, 3), (40, 90, 200), np.uint8)).save(photo)
    keep = np.zeros((height, width), np.uint8)
    keep[:, width // 2 :] = 255  # the right half is repainted
    Image.fromarray(keep).save(mask)
    (changed,) = predict(predictor, family.container, image=photo, **weights)
    assert changed.shape == (height, width, 3)
    (painted,) = predict(predictor, family.container, image=photo, mask=mask, **weights)
    assert painted.shape == (height, width, 3)
    assert (painted[:, : width // 2] == (40, 90, 200)).all()  # black mask: kept exactly
    assert not (painted[:, width // 2 :] == (40, 90, 200)).all()


def test_its_containers_schema_offers_what_it_takes(family):
    container = CONTAINERS[family.container]
    assert family in container.trains
    schema = json.loads((SCHEMAS_DIR / f"{container.name}.json").read_text())
    inputs = schema["components"]["schemas"]["Input"]["properties"]
    assert ("negative_prompt" in inputs) == family.negative_prompt
    assert ("scheduler" in inputs) == family.named_schedulers


def test_every_other_container_refuses_its_weights(trained, predictors):
    family = trained.family
    others = [c for c in CONTAINERS.values() if c.name != family.container]
    assert others
    for container in others:
        predictor = predictors(container.name, container.family)
        with pytest.raises(WrongFamilyError, match=f"trained for {re.escape(family.title)}") as e:
            predict(predictor, container.name, replicate_weights=trained.weights)
        assert f"--container {family.container}" in str(e.value)
