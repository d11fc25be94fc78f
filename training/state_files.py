"""Optimizer and scheduler state written without pickle: tensors go to a safetensors file,
everything else (numbers, lists, the int keys torch uses for parameter ids) to JSON.

A checkpoint folder can come back from anywhere a user copies it, so resuming never
unpickles; reading back gives exactly the structure that was written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def save_state(state: Any, folder: Path, name: str) -> None:
    """Write `state` as `name.json` + `name.safetensors` in `folder`."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors, {})
    save_file(tensors, str(Path(folder) / f"{name}.safetensors"))
    (Path(folder) / f"{name}.json").write_text(json.dumps(structure))


def load_state(folder: Path, name: str) -> Any:
    tensors = load_file(str(Path(folder) / f"{name}.safetensors"))
    return _decode(json.loads((Path(folder) / f"{name}.json").read_text()), tensors)


def _encode(value: Any, tensors: dict[str, torch.Tensor], seen: dict[tuple, str]) -> Any:
    if isinstance(value, torch.Tensor):
        # One tensor referenced from several places (8-bit AdamW shares its quantisation maps
        # between parameters) is stored once and comes back shared.
        identity = (value.device, value.data_ptr(), value.dtype, tuple(value.shape))
        if identity not in seen:
            seen[identity] = str(len(tensors))
            tensors[seen[identity]] = value.detach().cpu().contiguous()
        return {"tensor": seen[identity]}
    if isinstance(value, dict):  # keys may be ints (parameter ids): keep their type
        return {
            "dict": [
                [_encode(k, tensors, seen), _encode(v, tensors, seen)] for k, v in value.items()
            ]
        }
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, tensors, seen) for v in value]}
    if isinstance(value, list):
        return {"list": [_encode(v, tensors, seen) for v in value]}
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    raise TypeError(f"Cannot store a {type(value).__name__} in training state without pickle.")


def _decode(node: dict, tensors: dict[str, torch.Tensor]) -> Any:
    ((kind, payload),) = node.items()
    if kind == "tensor":
        return tensors[payload]
    if kind == "dict":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in payload}
    if kind == "tuple":
        return tuple(_decode(v, tensors) for v in payload)
    if kind == "list":
        return [_decode(v, tensors) for v in payload]
    return payload
