"""The files a request sends (`image`, `mask`, `input_images`), fetched for one call.

Cog would download `Path` inputs itself before predict() and train() run: with redirects to
any address, and leaving a temporary file behind whenever a download fails. Cog hands over
the client's URL or data URI instead (serving/cog_files.py), and it is fetched here, by the
model store's downloader under the same network rules (weights/download.py,
weights/network.py), into a folder of the call that the caller removes when the call ends.
Errors name the input.
"""

from __future__ import annotations

from pathlib import Path

from weights.download import DownloadError, DownloadPolicy, download, url_file_name
from weights.references import is_remote


def fetch_input(name: str, reference, folder: Path, policy: DownloadPolicy) -> Path:
    """`reference` as a local file: a URL or data URI is downloaded into `folder` under the
    client's own file name; a path (the operator's, checked by weights/references.py) is
    returned as it is."""
    if not (isinstance(reference, str) and is_remote(reference)):
        return Path(reference)
    # The client's file name: messages about the file then name what the client sent.
    target = folder / name / (url_file_name(reference) or name)
    try:
        download(reference, target, policy)
    except DownloadError as error:
        raise DownloadError(f"{name}: {error}") from None
    return target
