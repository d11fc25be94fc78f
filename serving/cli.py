"""Run predict() and train() in-process with the `cog` CLI's input syntax.

    python -m serving.cli predict -i prompt="a photo of TOK" -i image=@in.png
    python -m serving.cli train -i input_images=@data.zip -i max_train_steps=50
    python -m serving.cli predict --json @inputs.json
    python -m serving.cli --container flux train -i input_images=@data.zip -i steps=50

Inputs are validated against the same declarations the HTTP server uses (Cog's inspector
reads them from predict.py / train.py). `-i name=` leaves an optional input empty. Whoever runs
the CLI is the operator: local paths in file inputs (`replicate_weights=./weights.tar`, keys of
`loras`) are allowed here, where a request over HTTP may only name URLs. Outputs are written as
`output.0.png`, ... (or `-o NAME`) for predictions, as `cog predict` does, and
`trained_model.tar` for trainings (`cog train` writes `weights`, the name of a folder here).
Text inputs that name files (`replicate_weights`, `extra_lora`, `base_model`, `resume_from`)
take `@path` as that path; other text inputs take `@file` as the file's text.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from cog import _adt as adt
from cog import _inspector

from formats.bundle import BUNDLE_FILE
from generation.request import FILE_INPUTS
from serving.containers import CONTAINERS, DEFAULT_CONTAINER, Container, load_entry
from serving.schema import PREDICTOR_REF, inspect_entry
from weights.references import client_reference, is_remote

# Text inputs that name files or models; a local path in one becomes a `pathlib.Path`, which
# the predictor and trainer take as the operator's choice (weights/references.py).
PATH_INPUTS = (*FILE_INPUTS, "images", "base_model", "input_images", "resume_from")


class InputError(ValueError):
    """A command-line input that does not fit the declarations."""


def parse_inputs(pairs: list[str], json_arg: str | None, info: adt.PredictorInfo) -> dict:
    """Turn `-i name=value` pairs (and `--json`) into validated keyword arguments."""
    values: dict[str, Any] = {}
    if json_arg is not None:
        text = Path(json_arg[1:]).read_text() if json_arg.startswith("@") else json_arg
        values.update(json.loads(text))
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise InputError(f"-i {pair!r}: expected name=value.")
        field = info.inputs.get(name)
        if field is None:
            raise InputError(f"Unknown input {name!r}; valid inputs: {', '.join(info.inputs)}.")
        value = _convert(raw, field)
        if field.type.repetition in (adt.Repetition.REPEATED, adt.Repetition.OPTIONAL_REPEATED):
            values.setdefault(name, []).append(value)  # a repeated -i makes a list
        else:
            values[name] = value
    unknown = set(values) - set(info.inputs)
    if unknown:
        raise InputError(f"Unknown input(s) {sorted(unknown)}; valid inputs: {list(info.inputs)}.")
    try:
        kwargs = _inspector.check_input(info.inputs, values)
    except ValueError as error:
        raise InputError(str(error)) from None
    # A URL given for a `Path` input stays the URL: the call fetches it (serving/cog_files.py).
    kwargs = {k: client_reference(v) for k, v in kwargs.items()}
    for name in PATH_INPUTS:
        if name in kwargs:
            kwargs[name] = _operator_path(kwargs[name])
    if isinstance(kwargs.get("loras"), dict):
        kwargs["loras"] = {_operator_path(k): scale for k, scale in kwargs["loras"].items()}
    return kwargs


def _operator_path(value):
    """A local path the operator typed, as a `Path` (each one of a list); URLs and everything
    else unchanged."""
    if isinstance(value, list):
        return [_operator_path(item) for item in value]
    if isinstance(value, str) and value and not is_remote(value):
        return Path(value).expanduser()
    return value


def declared_defaults(reference: str = PREDICTOR_REF) -> dict:
    """Every input's default, as Cog's server fills them in: for calling `predict()` or
    `train()` in-process (a direct call would otherwise receive the `Input` declarations)."""
    return parse_inputs([], None, inspect_entry(reference))


def _convert(raw: str, field: adt.InputField) -> Any:
    primitive = field.type.primitive
    if raw == "" and field.type.repetition is adt.Repetition.OPTIONAL:
        return None  # `-i name=`: left empty
    if primitive is adt.PrimitiveType.ANY:  # a JSON object (e.g. loras)
        text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{field.name}: {raw!r} is not valid JSON ({error}).") from None
    names_a_file = primitive in (adt.PrimitiveType.PATH, adt.PrimitiveType.FILE)
    if raw.startswith("@") and (names_a_file or field.name in PATH_INPUTS):
        path = Path(raw[1:])
        if not path.exists():
            raise InputError(f"{field.name}: file {path} does not exist.")
        return str(path.resolve())
    if names_a_file:
        return raw  # a URL or data URI; the call fetches it
    if raw.startswith("@"):  # a text file for a string input (a prompt, say)
        try:
            return Path(raw[1:]).read_text()
        except UnicodeDecodeError:
            raise InputError(f"{field.name}: {raw[1:]} is not a text file.") from None
    try:
        if primitive is adt.PrimitiveType.INTEGER:
            return int(raw)
        if primitive is adt.PrimitiveType.FLOAT:
            return float(raw)
        if primitive is adt.PrimitiveType.BOOL:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
    except ValueError:
        kind = primitive.name.lower()
        raise InputError(f"{field.name}: {raw!r} is not a valid {kind}.") from None
    return raw


def output_names(count: int, suffixes: list[str], template: str | None) -> list[str]:
    """`output.0.png`, ... as `cog predict` names them; `-o NAME` for a single output."""
    if template and count == 1:
        return [template]
    stem = Path(template).stem if template else "output"
    return [f"{stem}.{i}{suffix}" for i, suffix in enumerate(suffixes)]


def run_predict(
    container: Container, kwargs: dict, weights: str | None, output: str | None
) -> list[str]:
    predictor = load_entry(container.predictor)()
    predictor.setup(weights)
    result = predictor.predict(**kwargs)
    files = result if isinstance(result, list) else [result]
    names = output_names(len(files), [Path(f).suffix for f in files], output)
    for source, name in zip(files, names, strict=True):
        shutil.copyfile(source, name)
    return names


def run_train(container: Container, kwargs: dict, output: str | None) -> list[str]:
    result = load_entry(container.trainer)(**kwargs)
    name = output or BUNDLE_FILE
    shutil.copyfile(getattr(result, "weights", result), name)
    return [name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run predict/train like the cog CLI.")
    parser.add_argument(
        "--container", choices=CONTAINERS, default=DEFAULT_CONTAINER, help="sdxl or flux"
    )
    parser.add_argument("command", choices=("predict", "train"))
    parser.add_argument("-i", "--input", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", help="inputs as JSON, or @file.json")
    parser.add_argument("-o", "--output", help="output file name")
    parser.add_argument(
        "--weights",
        default=os.environ.get("COG_WEIGHTS"),
        help="predict with these trained weights (default: $COG_WEIGHTS, as Cog's server)",
    )
    args = parser.parse_args(argv)

    container = CONTAINERS[args.container]
    reference = container.predictor if args.command == "predict" else container.trainer
    try:
        kwargs = parse_inputs(args.input, args.json, inspect_entry(reference))
    except (InputError, OSError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        if args.command == "predict":
            written = run_predict(container, kwargs, args.weights, args.output)
        else:
            written = run_train(container, kwargs, args.output)
    except Exception as error:  # one clear line for the user; the traceback is noise here
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return report_written(written)


def report_written(names: list[str]) -> int:
    """Print each written file as `cog` does; the exit status of a command that succeeded."""
    for name in names:
        print(f"Written output to {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
