"""Generate a container's OpenAPI schema from its entry files, as `cog build` does.

Cog's server (coglet) validates inputs and serves `/openapi.json` only when
`.cog/openapi_schema.json` exists. Without Docker there is no `cog build`, so the project
writes it itself from the same declarations, using Cog's own inspector to read them (one
source of truth): `.cog/openapi_schema.json` for the container being served (not committed),
and `.cog/schemas/<container>.json` for each (committed; `python -m serving.schema`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Any

from cog import _adt as adt
from cog import _inspector

from serving.containers import CONTAINERS, DEFAULT_CONTAINER, Container, entry_point

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / ".cog" / "openapi_schema.json"  # the one coglet reads, from its cwd
SCHEMAS_DIR = ROOT / ".cog" / "schemas"
PREDICTOR_REF = CONTAINERS[DEFAULT_CONTAINER].predictor
TRAINER_REF = CONTAINERS[DEFAULT_CONTAINER].trainer


def inspect_entry(reference: str) -> adt.PredictorInfo:
    """Read the inputs and output of `file.py:Name` with Cog's inspector."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return _inspector.create_predictor(*entry_point(reference))


def input_schema(info: adt.PredictorInfo, title: str) -> tuple[dict, dict]:
    """The input object schema, and the enum schemas its `choices` refer to."""
    properties, required, enums = {}, [], {}
    for name, field in info.inputs.items():
        prop: dict[str, Any] = {"x-order": field.order}
        if field.choices is not None:
            prop["allOf"] = [{"$ref": f"#/components/schemas/{name}"}]
            enums[name] = {
                "title": name,
                "description": "An enumeration.",
                "enum": field.choices,
                **field.type.primitive.json_type(),
            }
        else:
            prop["title"] = name.replace("_", " ").title()
            prop.update(field.type.json_type())

        default = _declared_default(field.default)
        if default is None:
            if field.type.repetition in (adt.Repetition.REQUIRED, adt.Repetition.REPEATED):
                required.append(name)
        else:
            prop["default"] = field.type.json_encode(field.type.normalize(default))
        if field.type.repetition is adt.Repetition.OPTIONAL:
            prop["nullable"] = True

        for key, value in (
            ("description", field.description),
            ("minimum", _as_declared(field.ge, field)),
            ("maximum", _as_declared(field.le, field)),
            ("minLength", field.min_length),
            ("maxLength", field.max_length),
            ("pattern", field.regex),
            ("deprecated", field.deprecated),
        ):
            if value is not None:
                prop[key] = value
        properties[name] = prop

    schema = {"title": title, "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def build_schema(predictor_ref: str = PREDICTOR_REF, trainer_ref: str = TRAINER_REF):
    """The whole OpenAPI document: prediction and training routes (Input/Output and
    TrainingInput/TrainingOutput components)."""
    schemas: dict[str, Any] = dict(_COMMON_SCHEMAS)
    paths: dict[str, Any] = {"/": _get("Root", "root__get"), "/health-check": _health_check()}

    modes = [
        ("Prediction", "predictions", "Input", "Output", predictor_ref),
        ("Training", "trainings", "TrainingInput", "TrainingOutput", trainer_ref),
    ]
    for noun, route, input_name, output_name, reference in modes:
        info = inspect_entry(reference)
        inputs, enums = input_schema(info, input_name)
        schemas[input_name] = inputs
        schemas[output_name] = {**info.output.json_type(), "title": output_name}
        schemas.update(enums)
        schemas[f"{noun}Request"] = _request(noun, input_name)
        schemas[f"{noun}Response"] = _response(noun, input_name, output_name)
        paths.update(_routes(noun, route))
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def schema_text(container: Container = CONTAINERS[DEFAULT_CONTAINER]) -> str:
    return json.dumps(build_schema(container.predictor, container.trainer), indent=2) + "\n"


def write_schema(
    container: Container = CONTAINERS[DEFAULT_CONTAINER], path: Path = SCHEMA_PATH
) -> Path:
    """Write `container`'s schema (only when its content changed, atomically)."""
    text = schema_text(container)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        staging = path.with_suffix(".tmp")
        staging.write_text(text)
        staging.replace(path)
    return path


def _as_declared(bound: float | None, field: adt.InputField) -> float | int | None:
    """Cog stores bounds as floats; integer inputs show integer bounds, as `cog build` does."""
    if bound is not None and field.type.primitive is adt.PrimitiveType.INTEGER:
        return int(bound)
    return bound


def _declared_default(default: Any) -> Any:
    if isinstance(default, Field):
        if default.default_factory is not MISSING:
            return default.default_factory()
        return None if default.default is MISSING else default.default
    return default


def _json_response(ref: str | None) -> dict:
    schema = {"$ref": f"#/components/schemas/{ref}"} if ref else {}
    return {
        "description": "Successful Response",
        "content": {"application/json": {"schema": schema}},
    }


_VALIDATION_ERROR_RESPONSE = {
    "description": "Validation Error",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    },
}


def _get(summary: str, operation_id: str) -> dict:
    return {
        "get": {
            "summary": summary,
            "operationId": operation_id,
            "responses": {"200": _json_response(None)},
        }
    }


def _health_check() -> dict:
    return _get("Healthcheck", "healthcheck_health_check_get")


def _routes(noun: str, route: str) -> dict:
    singular = route[:-1]
    id_name = f"{singular}_id"
    verb = "predict" if noun == "Prediction" else "train"
    return {
        f"/{route}": {
            "post": {
                "summary": verb.title(),
                "description": "Run a single prediction on the model"
                if noun == "Prediction"
                else "Run a training session",
                "operationId": f"{verb}_{route}_post",
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{noun}Request"}
                        }
                    }
                },
                "responses": {
                    "200": _json_response(f"{noun}Response"),
                    "422": _VALIDATION_ERROR_RESPONSE,
                },
            }
        },
        f"/{route}/{{{id_name}}}/cancel": {
            "post": {
                "summary": "Cancel",
                "operationId": f"cancel_{route}__{id_name}__cancel_post",
                "parameters": [
                    {
                        "required": True,
                        "schema": {"title": f"{noun} Id", "type": "string"},
                        "name": id_name,
                        "in": "path",
                    }
                ],
                "responses": {"200": _json_response(None), "422": _VALIDATION_ERROR_RESPONSE},
            }
        },
    }


def _request(noun: str, input_name: str) -> dict:
    return {
        "title": f"{noun}Request",
        "type": "object",
        "properties": {
            "id": {"title": "Id", "type": "string"},
            "input": {"$ref": f"#/components/schemas/{input_name}"},
        },
    }


def _response(noun: str, input_name: str, output_name: str) -> dict:
    timestamp = {"type": "string", "format": "date-time"}
    return {
        "title": f"{noun}Response",
        "type": "object",
        "properties": {
            "input": {"$ref": f"#/components/schemas/{input_name}"},
            "output": {"$ref": f"#/components/schemas/{output_name}"},
            "id": {"title": "Id", "type": "string"},
            "version": {"title": "Version", "type": "string"},
            "created_at": {"title": "Created At", **timestamp},
            "started_at": {"title": "Started At", **timestamp},
            "completed_at": {"title": "Completed At", **timestamp},
            "status": {"title": "Status", "type": "string"},
            "error": {"title": "Error", "type": "string"},
            "logs": {"title": "Logs", "type": "string"},
            "metrics": {"title": "Metrics", "type": "object"},
        },
    }


_COMMON_SCHEMAS = {
    "HTTPValidationError": {
        "title": "HTTPValidationError",
        "type": "object",
        "properties": {
            "detail": {
                "title": "Detail",
                "type": "array",
                "items": {"$ref": "#/components/schemas/ValidationError"},
            }
        },
    },
    "Status": {
        "title": "Status",
        "description": "An enumeration.",
        "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
        "type": "string",
    },
    "ValidationError": {
        "title": "ValidationError",
        "required": ["loc", "msg", "type"],
        "type": "object",
        "properties": {
            "loc": {
                "title": "Location",
                "type": "array",
                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            },
            "msg": {"title": "Message", "type": "string"},
            "type": {"title": "Error Type", "type": "string"},
        },
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is stale")
    args = parser.parse_args()
    targets = {SCHEMA_PATH: CONTAINERS[DEFAULT_CONTAINER]}
    targets.update((SCHEMAS_DIR / f"{name}.json", c) for name, c in CONTAINERS.items())
    for path, container in targets.items():
        if args.check:
            if not path.exists() or path.read_text() != schema_text(container):
                sys.exit(f"{path} is stale: run `make schema`.")
        else:
            print(write_schema(container, path))


if __name__ == "__main__":
    main()
