"""What the server fetches for a request, over Cog's real server: file inputs reach only public
addresses or the operator's allow-list, every refused address gets the same answer, errors
name the input and never the server's files, and no request leaves anything in the
temporary directory but the outputs it hands over."""

import base64
import io
import os
import socket

import numpy as np
import pytest
from PIL import Image

from tests.cog_server import request_when_free, running_server
from tests.conftest import tiny_variables
from tests.fileserver import FileServer
from weights.download import describe_source
from weights.network import ALLOWED_HOSTS_VARIABLE

SMALL = {"width": 64, "height": 64, "num_inference_steps": 2, "seed": 5}
UNCHANGED = {"prompt_strength": 0, "apply_watermark": False}  # the input image comes back
ALLOWED_HOST = "127.0.0.2"  # the operator's allow-list: a loopback address (Linux answers
# on all of 127.0.0.0/8) other than the 127.0.0.1 of the "internal" service
OUTPUTS_PREFIX = "sdxl-tuner-outputs-"  # the hand-off folder predict.py names (serving/handoff.py)


def png_bytes(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, "PNG")
    return buffer.getvalue()


def data_uri(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64," + base64.b64encode(data).decode()


def closed_port(host: str) -> int:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind((host, 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def internal():
    """A service on the server's own machine, which requests must not reach."""
    with FileServer() as server:
        server.add("/secret.png", png_bytes((10, 200, 10)))
        yield server


@pytest.fixture(scope="module")
def allowed():
    """A host on the operator's allow-list."""
    with FileServer(ALLOWED_HOST) as server:
        yield server


@pytest.fixture(scope="module")
def server_tmp(tmp_path_factory):
    """The server's TMPDIR."""
    return tmp_path_factory.mktemp("server-tmp")


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache, tiny_models, server_tmp):
    variables = {
        **tiny_variables(model_cache),
        ALLOWED_HOSTS_VARIABLE: ALLOWED_HOST,
        "TMPDIR": str(server_tmp),
    }
    with pytest.MonkeyPatch.context() as env:
        for name, value in variables.items():
            env.setenv(name, value)
        with running_server(tmp_path_factory.mktemp("server") / "predict.log") as url:
            yield url


def predict(url: str, inputs: dict) -> dict:
    status, response = request_when_free(f"{url}/predictions", {"input": {**SMALL, **inputs}})
    assert status == 200, response
    return response


def failure(response: dict) -> str:
    assert response["status"] == "failed" and response.get("output") is None, response
    return response["error"]


def output_pixels(response: dict) -> np.ndarray:
    assert response["status"] == "succeeded", response.get("error")
    data = base64.b64decode(response["output"][0].split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_no_file_input_reaches_a_non_public_address(server, internal, allowed):
    secret = internal.url("/secret.png")
    attempts = {
        "loopback": secret,
        "localhost": secret.replace("127.0.0.1", "localhost"),
        "IPv6 loopback": secret.replace("127.0.0.1", "[::1]"),
        "cloud metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "private": "http://10.0.0.7/photo.png",
        "closed port": f"http://127.0.0.1:{closed_port('127.0.0.1')}/secret.png",
        "redirect from an allowed host": allowed.add_redirect("/photo.png", secret),
    }
    answers = {
        what: failure(predict(server, {"image": url, **UNCHANGED})).replace(
            describe_source(url), "<url>"
        )
        for what, url in attempts.items()
    }
    # One answer: whether something listens there, and what, never shows.
    assert len(set(answers.values())) == 1, answers
    assert "image: <url> is refused: its host, or a redirect from it, is" in answers["loopback"]
    assert allowed.requests("/photo.png") == 1  # the allowed hop was fetched, the next not

    photo = data_uri(png_bytes((200, 60, 40)))
    for name, inputs in {
        "mask": {"image": photo, "mask": secret},
        "replicate_weights": {"replicate_weights": secret},
        "extra_lora": {"extra_lora": secret},
        "loras": {"loras": {secret: 0.5}},
    }.items():
        assert f"{secret} is refused" in failure(predict(server, inputs)), name
    assert internal.requests("/secret.png") == 0


def test_an_allowed_host_serves_file_inputs_and_url_schemes_ignore_case(server, allowed):
    photo = png_bytes((40, 40, 220))
    url = allowed.add("/photo.png", photo)
    expected = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))
    for reference in (url, url.replace("http://", "HTTP://"), data_uri(photo)):
        assert np.array_equal(
            output_pixels(predict(server, {"image": reference, **UNCHANGED})), expected
        )


def test_fetch_failures_name_the_input_and_never_the_servers_files(server, allowed, server_tmp):
    page = allowed.add_html("/s/share-link")  # a share link: a web page, not the file
    unreachable = f"http://{ALLOWED_HOST}:{closed_port(ALLOWED_HOST)}/photo.png"
    cases = {
        page: [f"image: {page} answered with an HTML page instead of the file"],
        unreachable: [f"image: Could not reach {ALLOWED_HOST}:", "connection refused"],
        allowed.url("/missing.png"): ["image: ", "HTTP 404"],
        data_uri(b"just text", "text/plain"): ["image: a data URI", "is not an image"],
    }
    for url, parts in cases.items():
        error = failure(predict(server, {"image": url}))
        assert all(part in error for part in parts), error
        assert str(server_tmp) not in error and "/tmp" not in error, error
        assert "Max retries" not in error and "HTTPConnectionPool" not in error, error


def tree_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_the_temporary_directory_holds_only_the_last_outputs_after_any_request(
    server, allowed, server_tmp
):
    def not_handed_over() -> list[str]:
        return sorted(p.name for p in server_tmp.iterdir() if not p.name.startswith(OUTPUTS_PREFIX))

    photo = data_uri(png_bytes((200, 60, 40)))
    assert predict(server, {"image": photo, "prompt_strength": 0.5})["status"] == "succeeded"
    assert not_handed_over() == [] and len(list(server_tmp.iterdir())) == 1

    large = data_uri(os.urandom(30 << 20), "application/octet-stream")
    for _ in range(2):  # a 30 MiB image, then a mask URL that answers 404
        error = failure(predict(server, {"image": large, "mask": allowed.url("/no-mask.png")}))
        assert "DownloadError: mask: " in error and "HTTP 404" in error, error
        assert not_handed_over() == []
        assert tree_bytes(server_tmp) < 1 << 20  # no copy of the 30 MiB is left anywhere
