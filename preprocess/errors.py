"""The one error type preprocessing raises for bad input."""


class PreprocessError(ValueError):
    """The training data cannot be used: the message says what was wrong and what to do."""
