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

The bounds sit between a sound run and the two breaks, measured with these settings (sound /
lora_B frozen / trigger not substituted): subject 0.44 / 0.00 / 0.00; preserved 0.56 / 1.00 /
0.38; LoRA effect 0.22 / 0.00 / 0.12.
"""

import pytest

from tests.conftest import tiny_variables
from tests.train_helpers import one_thread  # noqa: F401 (autouse fixture)
from toyworld.evaluate import EvaluationSettings, ToyEvaluator, train_subject
from toyworld.subject import write_subject_zip
from weights.settings import TOY

STEPS = 400
TRAIN_INPUTS = dict(resolution=64, seed=0, max_train_steps=STEPS, checkpointing_steps=0,
                    verbose=False)  # fmt: skip
EVALUATION = EvaluationSettings(seeds=(0, 1), num_inference_steps=10)
MIN_SUBJECT_GAIN = 0.1875  # share of TOK images showing the emblem, above the base's (0.0)
MIN_PRESERVED = 0.4375  # share of non-TOK images whose colours are the base model's
MAX_DRIFT = 0.16  # mean absolute pixel difference from the base's images (0.13)
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
def trained(tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("quality")
    return str(
        train_subject(write_subject_zip(work / "emblem.zip"), TOY, work, **TRAIN_INPUTS).path
    )


@pytest.fixture(scope="module")
def evaluations(evaluator, trained):
    return evaluator.evaluate(), evaluator.evaluate(trained)


@pytest.fixture(scope="module")
def fidelities(evaluations):
    """(base, tuned) fidelity."""
    return tuple(evaluation.fidelity for evaluation in evaluations)


def test_the_base_can_draw_the_subject(evaluator):
    ceiling = evaluator.subject_ceiling()
    assert ceiling >= MIN_CEILING, ceiling


def test_trigger_prompts_draw_the_subject(fidelities):
    base, tuned = fidelities
    assert tuned.subject >= base.subject + MIN_SUBJECT_GAIN, (base, tuned)


def test_prompts_without_the_trigger_keep_what_the_base_drew(fidelities):
    base, tuned = fidelities
    assert tuned.preserved >= MIN_PRESERVED, (base, tuned)
    assert tuned.drift <= MAX_DRIFT, (base, tuned)


def test_the_lora_carries_part_of_the_subject(evaluator, trained, evaluations):
    effect = evaluator.lora_effect(trained, evaluations[1])
    assert effect >= MIN_LORA_EFFECT, effect
