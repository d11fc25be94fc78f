"""Fine-tuning learns the subject and does not damage the base: `train()` on the emblem zip,
with the default settings except resolution 64 and a short run, on the toy base. A reduced
`benchmarks/quality/run.py` (docs/quality.md):

- the base's VAE can draw the subject at all (the ceiling of what a fine-tune can reach);
- `TOK` prompts draw the emblem, which the base never does; this fails when the LoRA gets no
  gradient and when the captions' trigger is not replaced by the trained tokens;
- prompts without `TOK` still draw what the base model drew; this fails when the subject
  spreads to every caption (the trigger not substituted);
- the LoRA carries part of what `TOK` draws: the subject prompts' images change when its scale
  goes from 0 to the predictor's default; this fails when the LoRA gets no gradient.

Each bound must hold on the worse of two training seeds. The run trains what a request that
sets no learning input gets: the subject recipe (training/config.py PRESETS). The bounds sit
between sound runs and the breaks, measured with these settings (seed 0 / seed 1 / lora_B
frozen / trigger not substituted): subject 0.625 / 0.625 / 0.00 / 0.00; preserved 0.375 /
0.4375; drift 0.141 / 0.136; LoRA effect 0.26 / 0.24 / 0.00. Replicate's learning values
(AdamW, rank 32) drew the subject in 0.44 / 0.25: the subject bound also fails if the defaults
stop learning on every seed. The second seed costs about 40 s of CI.
"""

import pytest

from tests.conftest import tiny_variables
from tests.train_helpers import one_thread  # noqa: F401 (autouse fixture)
from toyworld.evaluate import EvaluationSettings, ToyEvaluator, train_on_zip
from toyworld.subject import write_subject_zip
from weights.settings import TOY

STEPS = 400
TRAIN_INPUTS = dict(resolution=64, max_train_steps=STEPS, checkpointing_steps=0, verbose=False)
# The bounds hold on the worse of two training seeds, not on one lucky run.
TRAINING_SEEDS = (0, 1)
EVALUATION = EvaluationSettings(seeds=(0, 1), num_inference_steps=10)
# Share of TOK images showing the emblem, above the base's (0.0): 6 of 16, four images below
# sound runs (10 of 16), which a CPU's other rounding can flip only one or two of.
MIN_SUBJECT_GAIN = 0.375
# Share of non-TOK images whose colours are the base model's: 4 of 16, two below the worse
# sound run (6 of 16); a trainer that moves every prompt falls under it.
MIN_PRESERVED = 0.25
MAX_DRIFT = 0.16  # mean absolute pixel difference from the base's images (0.14)
MIN_LORA_EFFECT = 0.05  # drift of TOK images between LoRA scale 0 and the default
MIN_CEILING = 0.75  # share of emblem photos that survive the toy VAE's round trip (1.0)


@pytest.fixture(scope="module")
def evaluator(model_cache):
    with pytest.MonkeyPatch.context() as env:
        for name, value in tiny_variables(model_cache).items():
            env.setenv(name, value)
        env.setenv("BASE_MODEL", TOY)
        yield ToyEvaluator(TOY, model_cache, EVALUATION)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[int, str]:
    """The tarball of each training seed."""
    work = tmp_path_factory.mktemp("quality")
    photos = write_subject_zip(work / "emblem.zip")
    return {
        seed: str(train_on_zip(photos, TOY, work / f"seed-{seed}", **TRAIN_INPUTS, seed=seed).path)
        for seed in TRAINING_SEEDS
    }


@pytest.fixture(scope="module")
def evaluations(evaluator, trained):
    """The base's evaluation, and each training seed's."""
    return evaluator.evaluate(), {seed: evaluator.evaluate(path) for seed, path in trained.items()}


def test_the_base_can_draw_the_subject(evaluator):
    ceiling = evaluator.subject_ceiling()
    assert ceiling >= MIN_CEILING, ceiling


def test_trigger_prompts_draw_the_subject_on_every_training_seed(evaluations):
    base, tuned = evaluations
    worst = min(e.fidelity.subject for e in tuned.values())
    assert worst >= base.fidelity.subject + MIN_SUBJECT_GAIN, _by_seed(tuned)


def test_prompts_without_the_trigger_keep_what_the_base_drew_on_every_seed(evaluations):
    _, tuned = evaluations
    assert min(e.fidelity.preserved for e in tuned.values()) >= MIN_PRESERVED, _by_seed(tuned)
    assert max(e.fidelity.drift for e in tuned.values()) <= MAX_DRIFT, _by_seed(tuned)


def test_the_lora_carries_part_of_the_subject_on_every_seed(evaluator, trained, evaluations):
    _, tuned = evaluations
    effects = {seed: evaluator.lora_effect(trained[seed], tuned[seed]) for seed in trained}
    assert min(effects.values()) >= MIN_LORA_EFFECT, effects


def _by_seed(tuned) -> dict:
    return {seed: evaluation.fidelity for seed, evaluation in tuned.items()}
