"""Cog's HTTP API as the fleet speaks it: the request bodies a container's server takes, the
checks it makes before a call (HTTP 422) and the response bodies it returns (coglet 0.23), so
a client written for one container works unchanged against the fleet.

The input checks run against the container's committed OpenAPI schema (.cog/schemas/), as
coglet validates against the schema `cog build` writes; the call's arguments are made by
Cog's own inspector from the entry file's declarations, as Cog's worker makes them.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import secrets
from pathlib import Path

from jsonschema import Draft7Validator

from serving.containers import Container

SCHEMAS_DIR = Path(__file__).resolve().parents[1] / ".cog" / "schemas"
# coglet 0.23 words a failed call's error so: its prefix twice, then `<Exception>: <message>`.
FAILED_CALL = "Prediction failed: Prediction failed: "


class InputProblems:
    """The checks coglet makes of a request's `input` before any call: types, bounds and
    choices from the schema. Needs neither torch nor the models (the ingress runs it)."""

    def __init__(self, container: Container, component: str = "Input"):
        document = json.loads((SCHEMAS_DIR / f"{container.name}.json").read_text())
        schemas = {name: _json_schema(s) for name, s in document["components"]["schemas"].items()}
        self.validator = Draft7Validator({**schemas[component], "components": {"schemas": schemas}})

    def of(self, values) -> list[dict]:
        """The 422 body's `detail` entries (empty when the input is fine), sorted by input."""
        detail = []
        for error in self.validator.iter_errors(values):
            names = list(error.absolute_path)[:1]
            if error.validator == "required":
                names = [n for n in error.validator_value if n not in error.instance][:1]
            detail.append(
                {"loc": ["body", "input", *names], "msg": _message(error), "type": "value_error"}
            )
        return sorted(detail, key=lambda entry: [str(part) for part in entry["loc"]])


def call_arguments(info, values: dict) -> dict:
    """The keyword arguments Cog's worker passes to predict() or train() for `values`
    (`info`: the entry's inputs read by Cog's inspector): declared defaults filled in and
    values normalised, except that a file input stays the text the client sent. coglet
    hands a local path over as that text too, which the call then refuses
    (weights/references.py); a URL's text is what the call fetches (serving/cog_files.py)."""
    from cog import _adt, _inspector

    arguments = _inspector.check_input(info.inputs, values)
    for name, field in info.inputs.items():
        if field.type.primitive is _adt.PrimitiveType.PATH and name in values:
            arguments[name] = values[name]
    return arguments


def prediction_id(kind: str = "pred") -> str:
    return f"{kind}_{secrets.token_hex(8)}"


def succeeded(call_id: str, output, logs: str, seconds: float) -> dict:
    return {
        "id": call_id,
        "logs": logs,
        "metrics": {"predict_time": seconds},
        "output": output,
        "status": "succeeded",
    }


def failed(call_id: str, error: BaseException | str, logs: str, seconds: float) -> dict:
    """A failed call's body; an exception is named as coglet names it."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {
        "error": FAILED_CALL + text,
        "id": call_id,
        "logs": logs,
        "metrics": {"predict_time": seconds},
        "status": "failed",
    }


def data_uri(path: Path) -> str:
    """An output file inlined as coglet inlines it when no upload URL is set."""
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _json_schema(schema: dict) -> dict:
    """An OpenAPI 3.0 object schema as JSON Schema: `nullable` inputs also take null."""
    properties = {}
    for name, prop in schema.get("properties", {}).items():
        if prop.get("nullable"):
            rest = {k: v for k, v in prop.items() if k != "nullable"}
            has_type = "type" in rest
            prop = (
                {**rest, "type": [rest["type"], "null"]}
                if has_type
                else {"anyOf": [{"type": "null"}, rest]}
            )
        properties[name] = prop
    return {**schema, "properties": properties} if properties else schema


def _message(error) -> str:
    """jsonschema's message, with values written as JSON as coglet writes them."""
    if error.validator == "type":
        kinds = error.validator_value
        kind = kinds if isinstance(kinds, str) else next(k for k in kinds if k != "null")
        return f"{json.dumps(error.instance)} is not of type {json.dumps(kind)}"
    return error.message
