"""Training-data preprocessing (the first half of `train()`): the pipeline is pipeline.py."""

from preprocess.errors import PreprocessError
from preprocess.pipeline import PreparedDataset, PreprocessConfig, TrainingImage, preprocess
from preprocess.stages import StageClock

__all__ = [
    "PreparedDataset",
    "PreprocessConfig",
    "PreprocessError",
    "StageClock",
    "TrainingImage",
    "preprocess",
]
