"""Fine-tuning still works (issue 9): `train()` on the emblem zip, with the default settings
except resolution 64 and a short run, on the toy base, brings the emblem into `TOK` prompts
while other prompts keep what the base model drew. A reduced `benchmarks/quality/run.py`.

The thresholds come from measured values with a margin (README, "Quality"): they fail when
learning breaks (no gradient into the LoRA, the trigger left as plain text in the captions),
not when a seed shifts.
"""

import pytest

from tests.conftest import tiny_variables
from tests.train_helpers import one_thread  # noqa: F401 (autouse fixture)
from toyworld.evaluate import EvaluationSettings, ToyEvaluator, train_subject
from toyworld.subject import write_subject_zip
from weights.settings import TOY

STEPS = 150
TRAIN_INPUTS = dict(resolution=64, seed=0, max_train_steps=STEPS, checkpointing_steps=0,
                    verbose=False)  # fmt: skip
EVALUATION = EvaluationSettings(seeds=(0, 1), num_inference_steps=10)
MIN_SUBJECT_GAIN = 0.0  # subject fidelity above the base model's, at least
MIN_PRESERVED = 0.0  # share of non-TOK images whose colours are the base model's
MAX_DRIFT = 1.0  # mean absolute pixel difference from the base model's images


@pytest.fixture(scope="module")
def toy_env(model_cache):
    with pytest.MonkeyPatch.context() as env:
        for name, value in tiny_variables(model_cache).items():
            env.setenv(name, value)
        env.setenv("BASE_MODEL", TOY)
        yield model_cache


@pytest.fixture(scope="module")
def evaluator(toy_env):
    return ToyEvaluator(TOY, toy_env, EVALUATION)


@pytest.fixture(scope="module")
def scores(evaluator, tmp_path_factory):
    work = tmp_path_factory.mktemp("quality")
    subject_zip = write_subject_zip(work / "emblem.zip")
    trained = train_subject(subject_zip, TOY, work, **TRAIN_INPUTS)
    return evaluator.evaluate().fidelity, evaluator.evaluate(str(trained.path)).fidelity


def test_the_trigger_brings_the_subject_in(scores):
    base, tuned = scores
    assert tuned.subject >= base.subject + MIN_SUBJECT_GAIN, (base, tuned)


def test_prompts_without_the_trigger_keep_what_the_base_drew(scores):
    base, tuned = scores
    assert tuned.preserved >= MIN_PRESERVED, (base, tuned)
    assert tuned.drift <= MAX_DRIFT, (base, tuned)
