"""Which models the environment selects: one switch for the embedded setup, and errors that
name the variable to change."""

import pytest

from weights.base_models import ModelUnavailableError, resolve_model
from weights.settings import MODEL_VARIABLES, HubSettings, ModelSettings

MODEL_FIELDS = ("base_model", "refiner_model", "safety_checker_model", "caption_model")
MODEL_FIELDS += ("mask_model", "upscaler_model")


@pytest.fixture
def clean_env(monkeypatch):
    for variable in (*MODEL_VARIABLES, "SDXL_TUNER_PROFILE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def models(settings: ModelSettings) -> list[str]:
    return [getattr(settings, name) for name in MODEL_FIELDS]


def test_the_tiny_profile_makes_every_unset_model_tiny_and_the_hub_offline(clean_env):
    assert "tiny" not in models(ModelSettings.from_env()) and not HubSettings.from_env().offline
    clean_env.setenv("SDXL_TUNER_PROFILE", "tiny")
    assert models(ModelSettings.from_env()) == ["tiny"] * 6 and HubSettings.from_env().offline
    clean_env.setenv("BASE_MODEL", "toy")  # a variable that is set wins
    assert models(ModelSettings.from_env()) == ["toy"] + ["tiny"] * 5
    clean_env.setenv("SDXL_TUNER_PROFILE", "small")
    with pytest.raises(ValueError, match="SDXL_TUNER_PROFILE='small': use one of tiny"):
        ModelSettings.from_env()


def test_an_embedded_base_brings_the_embedded_rest(clean_env):
    clean_env.setenv("BASE_MODEL", "tiny")
    assert models(ModelSettings.from_env()) == ["tiny"] * 6
    clean_env.setenv("REFINER_MODEL", "someone/refiner")
    assert ModelSettings.from_env().refiner_model == "someone/refiner"


def test_an_unreachable_hub_model_names_its_own_variable(clean_env, tmp_path):
    clean_env.setenv("HF_HOME", str(tmp_path / "hf"))
    clean_env.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as error:
        resolve_model("someone/no-such-refiner", "refiner", tmp_path)
    message = str(error.value)
    assert "the refiner model 'someone/no-such-refiner'" in message
    assert "Point REFINER_MODEL at" in message and "SDXL_TUNER_PROFILE=tiny" in message
