"""What a request may name as a file: remote things only.

Over HTTP a file-like input (`image`, `mask`, `replicate_weights`, `extra_lora`, `loras`,
`input_images`, `base_model`) arrives as the URL or data URI the client wrote: as text, or for
`Path` inputs as a path-like object whose text is that URL (Cog's download of it is deferred
to us, serving/cog_files.py). Text that names a local path would let a client read the
server's own files, so it is refused. Local paths belong to the operator: `COG_WEIGHTS` and
the other environment variables, the in-process CLI and Python callers (which pass
`pathlib.Path` objects, something JSON cannot carry), and the folders an operator lists in
`SDXL_TUNER_LOCAL_DIRS`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from weights.settings import LOCAL_DIRS_VARIABLE

REMOTE_SCHEMES = ("http://", "https://", "data:")
# `owner/name` or `owner/name@revision`: how a request names a Hugging Face model.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w.-]+)?")


class LocalPathRefused(ValueError):
    """A request named a file on the server's own disk."""


def has_scheme(reference: str, *schemes: str) -> bool:
    """Whether `reference` starts with one of `schemes` (`"http://"`, `"data:"`), in any case:
    URL schemes are case-insensitive."""
    return reference[:8].lower().startswith(schemes)


def is_remote(reference: str) -> bool:
    return has_scheme(reference, *REMOTE_SCHEMES)


def client_reference(value):
    """A file input as the client sent it: a path-like object whose text is a URL or data URI
    (Cog's deferred download of a `Path` input) becomes that text; anything else is returned
    as it is. (A real path's text never starts with `http://`: paths collapse `//`.)"""
    if isinstance(value, os.PathLike) and is_remote(os.fspath(value)):
        return os.fspath(value)
    return value


def is_operator_path(value, local_dirs: tuple[Path, ...]) -> bool:
    """A `pathlib.Path` (from the operator's code or command line), or text naming a path
    inside an allowed folder."""
    if not isinstance(value, str):
        return True
    resolved = Path(value).expanduser().resolve()
    return any(resolved.is_relative_to(folder) for folder in local_dirs)


def check_file_input(name: str, value, local_dirs: tuple[Path, ...]):
    """`value` as the reference to fetch (see `client_reference`), or `LocalPathRefused`
    unless it is empty, remote, or the operator's."""
    value = client_reference(value)
    if value is None or (isinstance(value, str) and is_remote(value)):
        return value
    if not is_operator_path(value, local_dirs):
        raise LocalPathRefused(
            f"{name}: {_shown(value)} is not an http(s) URL or a data URI. A request may only "
            "name files by URL (or send them as data URIs); paths on the server are refused. "
            f"(A self-hosted server can allow local folders with {LOCAL_DIRS_VARIABLE}.)"
        )
    return value


def check_model_input(name: str, value, local_dirs: tuple[Path, ...], builtin: tuple[str, ...]):
    """A base model a request names: a built-in name, a hub id, a URL, or the operator's path.
    Returns whether it may be looked up on local disk (a hub id from a request never is)."""
    if value is None:
        return True
    if isinstance(value, str) and (value in builtin or HUB_ID.fullmatch(value)):
        return False
    check_file_input(name, value, local_dirs)
    return not (isinstance(value, str) and is_remote(value))


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")
