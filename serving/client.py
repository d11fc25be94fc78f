"""A command-line client of a running container's HTTP API: the inputs as `serving.cli` takes
them, sent the way any HTTP client sends them.

    python -m serving.client http://localhost:5001 train -i input_images=@photos.zip -o w.tar
    python -m serving.client http://localhost:5000 predict -i prompt="a photo of TOK"

It waits until the server is ready (and says so if its setup failed), sends local files as
data URIs, retries the 409 a server answers right after a response (docs/serving.md), and on
any failure prints the server's message and exits non-zero. Outputs are written only when the
call succeeded, each beside its final name and then renamed, so a good file is never replaced
by an empty one. The types of the inputs come from the server's own schema.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import os
import sys
import time
from pathlib import Path

import requests

from formats.bundle import BUNDLE_FILE
from serving.cli import PATH_INPUTS, output_names, report_written

ROUTES = {"predict": ("predictions", "Input"), "train": ("trainings", "TrainingInput")}
READY_STATES = ("READY", "BUSY")
BROKEN_STATES = ("SETUP_FAILED", "UNHEALTHY", "DEFUNCT")
BUSY_RETRY_SECONDS = 30  # how long a 409 (another call running) is retried
EXTENSIONS = {"image/jpeg": ".jpg", "application/x-tar": ".tar"}
# coglet 0.23 puts this before a failed call's error twice (docs/serving.md); shown once.
FAILED_PREFIX = "Prediction failed: "


class ClientError(RuntimeError):
    """The server is not there, not ready, refused the inputs, or the call failed."""


def wait_until_ready(server: str, timeout: float) -> None:
    """Poll /health-check until the server can take calls (its setup may download models)."""
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            health = requests.get(f"{server}/health-check", timeout=10).json()
        except (requests.ConnectionError, requests.Timeout, ValueError) as error:
            last = type(error).__name__
        else:
            last = health.get("status", "?")
            if last in READY_STATES:
                return
            if last in BROKEN_STATES:
                logs = (health.get("setup") or {}).get("logs") or ""
                tail = "\n".join(logs.strip().splitlines()[-15:])
                raise ClientError(f"The server at {server} is {last}.\n{tail}")
        time.sleep(1)
    raise ClientError(f"The server at {server} was not ready within {timeout:.0f} s ({last}).")


def request_inputs(pairs: list[str], schemas: dict, schema_name: str) -> dict:
    """`-i name=value` pairs as JSON values of the types the server's schema declares
    (`schemas`: its components; `schema_name`: Input or TrainingInput)."""
    properties = schemas[schema_name]["properties"]
    inputs: dict = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or name not in properties:
            valid = ", ".join(properties)
            raise ClientError(f"-i {pair!r}: expected name=value with one of: {valid}.")
        prop = dict(properties[name])
        for reference in prop.get("allOf", ()):  # choices: the type is the enumeration's
            prop["type"] = schemas[reference["$ref"].rsplit("/", 1)[-1]]["type"]
        value = _convert(name, raw, prop)
        if prop.get("type") == "array":
            inputs.setdefault(name, []).append(value)
        else:
            inputs[name] = value
    return inputs


def _convert(name: str, raw: str, prop: dict):
    kind = prop.get("type")
    if raw == "" and prop.get("nullable"):
        return None
    if raw.startswith("@") and (prop.get("format") == "uri" or name in PATH_INPUTS):
        return data_uri(Path(raw[1:]), name)  # over HTTP a local file travels as a data URI
    if raw.startswith("@"):
        raw = Path(raw[1:]).read_text()
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
        if kind == "boolean":
            return {"true": True, "false": False, "1": True, "0": False}[raw.lower()]
        if kind == "object":  # loras
            return json.loads(raw)
    except (ValueError, KeyError):
        raise ClientError(f"{name}: {raw!r} is not a valid {kind or 'JSON value'}.") from None
    return raw


def data_uri(path: Path, name: str) -> str:
    if not path.is_file():
        raise ClientError(f"{name}: file {path} does not exist.")
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def call(server: str, route: str, inputs: dict) -> dict:
    """POST one call and return its finished response; a 409 is retried for a while."""
    response = post_when_free(f"{server}/{route}", {"input": inputs})
    body = response.json() if response.content else {}
    error = response_error(route[:-1], response.status_code, body)
    if error is not None:
        raise error
    return body


def post_when_free(url: str, body: dict | None, headers: dict | None = None) -> requests.Response:
    """POST `body`, retrying the 409 of a busy server for BUSY_RETRY_SECONDS."""
    deadline = time.monotonic() + BUSY_RETRY_SECONDS
    while True:
        response = requests.post(url, json=body, headers=headers, timeout=None)
        if response.status_code != 409 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def response_error(kind: str, status: int, body: dict) -> ClientError | None:
    """What went wrong with a call (`kind`: prediction or training), in the server's words:
    the inputs it refused (422), or the error of a failed call with the end of its log; None
    when it succeeded or was accepted to run."""
    if status == 422:
        problems = [f"{'.'.join(map(str, d['loc'][1:]))}: {d['msg']}" for d in body["detail"]]
        return ClientError("The server refused the inputs:\n- " + "\n- ".join(problems))
    if status in (200, 202) and body.get("status") in ("succeeded", "starting", "processing"):
        return None
    logs = "\n".join((body.get("logs") or "").strip().splitlines()[-10:])
    return ClientError(
        f"The {kind} failed: {failure_text(body, status)}" + (f"\n{logs}" if logs else "")
    )


def failure_text(body: dict, status: int) -> str:
    """A failed call's error without coglet's doubled prefix."""
    error = body.get("error") or (f"HTTP {status}" if status != 200 else body.get("status", ""))
    while error.startswith(FAILED_PREFIX):
        error = error.removeprefix(FAILED_PREFIX)
    return error


def write_outputs(output, template: str | None) -> list[str]:
    """Data-URI outputs into files named as the cli names them (`template`: `-o`); URLs (a
    server with an upload URL) are returned as they are."""
    outputs = output if isinstance(output, list) else [output]
    decoded = [_decode(item) for item in outputs if item.startswith("data:")]
    names = output_names(len(decoded), [suffix for suffix, _ in decoded], template)
    for name, (_, data) in zip(names, decoded, strict=True):
        partial = Path(name).with_name(f".{Path(name).name}.partial")
        partial.write_bytes(data)
        os.replace(partial, name)
    return [*names, *(item for item in outputs if not item.startswith("data:"))]


def _decode(uri: str) -> tuple[str, bytes]:
    header, _, payload = uri.partition(",")
    mime = header.removeprefix("data:").split(";")[0]
    suffix = EXTENSIONS.get(mime) or mimetypes.guess_extension(mime) or ".bin"
    return suffix, base64.b64decode(payload)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Call a running Cog server of this project.")
    parser.add_argument("server", help="the server's address, e.g. http://localhost:5000")
    parser.add_argument("command", choices=ROUTES)
    parser.add_argument("-i", "--input", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("-o", "--output", help="output file name (several: NAME.0.png, …)")
    parser.add_argument("--wait", type=float, default=600, help="seconds to wait for READY")
    args = parser.parse_args(argv)
    server = args.server if "://" in args.server else f"http://{args.server}"
    route, schema_name = ROUTES[args.command]
    try:
        wait_until_ready(server, args.wait)
        schema = requests.get(f"{server}/openapi.json", timeout=30).json()
        inputs = request_inputs(args.input, schema["components"]["schemas"], schema_name)
        body = call(server, route, inputs)
        template = args.output or (BUNDLE_FILE if args.command == "train" else None)
        written = write_outputs(body["output"], template)
    except (ClientError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return report_written(written)


if __name__ == "__main__":
    sys.exit(main())
