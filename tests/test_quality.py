"""Fine-tuning still works (issue 9): `train()` on the emblem zip, with the default settings
except resolution 64 and a short run, on the toy base, brings the emblem into `TOK` prompts
while other prompts keep what the base model drew. A reduced `benchmarks/quality/run.py`.

The thresholds and the values they were set from are in README.md ("Quality").
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
MIN_SUBJECT_CEILING = 0.75  # emblem photos that survive the base's VAE round trip
MIN_SUBJECT_GAIN = 0.5  # subject fidelity above the base model's
MIN_PRESERVED = 0.5  # share of non-TOK images whose colours are the base model's (0.69)
MAX_DRIFT = 0.05  # mean absolute pixel difference from the base model's images (0.030)


@pytest.fixture(scope="module")
def evaluator(model_cache):
    with pytest.MonkeyPatch.context() as env:
        for name, value in tiny_variables(model_cache).items():
            env.setenv(name, value)
        env.setenv("BASE_MODEL", TOY)
        yield ToyEvaluator(TOY, model_cache, EVALUATION)


@pytest.fixture(scope="module")
def scores(evaluator, tmp_path_factory):
    work = tmp_path_factory.mktemp("quality")
    trained = train_subject(write_subject_zip(work / "emblem.zip"), TOY, work, **TRAIN_INPUTS)
    return evaluator.evaluate().fidelity, evaluator.evaluate(str(trained.path)).fidelity


def test_the_base_model_can_draw_the_subject(evaluator):
    ceiling = evaluator.subject_ceiling()
    assert ceiling >= MIN_SUBJECT_CEILING, (
        f"Only {ceiling:.0%} of the emblem photos keep the emblem through the toy base's VAE: "
        "no fine-tune can draw what the VAE cannot decode. Train the toy VAE on colours beyond "
        "the scene palette."
    )


def test_the_trigger_brings_the_subject_in(scores):
    base, tuned = scores
    assert tuned.subject >= base.subject + MIN_SUBJECT_GAIN, (base, tuned)


def test_prompts_without_the_trigger_keep_what_the_base_drew(scores):
    base, tuned = scores
    assert tuned.preserved >= MIN_PRESERVED, (base, tuned)
    assert tuned.drift <= MAX_DRIFT, (base, tuned)
