"""Cog's download of `Path` inputs, handed over to the model: imported by every entry file.

For a `Path` input given as a URL or data URI (`image`, `mask`, `input_images`), Cog's worker
calls `cog.types.URLPath.convert()` before predict() or train() run: a plain `requests.get`
that follows redirects to any address (127.0.0.1, the cloud metadata service), and that leaves
its `NamedTemporaryFile` in the temporary directory whenever the download fails. Importing
this module makes `convert()` hand back the `URLPath` itself: Cog then makes no request and
writes no file (a data URI is decoded in memory only), and the call receives a path-like
object whose text is the client's URL or data URI. `weights.references.client_reference`
turns it back into that text, and the call fetches it under the project's network rules into
a folder removed when the call ends (weights/request_files.py, weights/network.py).
"""

from __future__ import annotations

from cog.types import URLPath


def _deferred(self: URLPath) -> URLPath:
    return self


URLPath.convert = _deferred
