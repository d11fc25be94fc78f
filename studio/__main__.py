"""`python -m studio` (`make studio`): the studio on 127.0.0.1, over Cog servers it starts
(the embedded toy SDXL on a machine without a GPU) or those given by URL."""

from __future__ import annotations

import weights.quiet  # noqa: F401 (first: keeps libraries' import-time noise out of the terminal)

# isort: split
import argparse
import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path

from serving.containers import CONTAINERS, DEFAULT_CONTAINER
from studio.actions import Studio
from studio.cog_api import CogServer
from studio.servers import ServerPair, StartedServers, family_base_models
from studio.web import StudioServer
from weights.settings import StudioSettings

DEFAULT_DATA = Path.home() / ".cache" / "sdxl-tuner" / "studio"
LOCAL_HOST = "127.0.0.1"


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The studio: train on your photos, generate.")
    parser.add_argument("--host", default=LOCAL_HOST)
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--predict-url", help="a running predict server (else one is started)")
    parser.add_argument("--train-url", help="a running train server (else one is started)")
    parser.add_argument("--public-url", help="the studio's address as the servers reach it")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="models, gallery, photos")
    parser.add_argument("--container", choices=CONTAINERS, default=DEFAULT_CONTAINER)
    parser.add_argument(
        "--models",
        choices=("auto", "embedded", "configured"),
        default="auto",
        help="the embedded models (the toy SDXL) or the configured base models, for the "
        "servers started here and the page's family choice (auto: configured with a GPU or "
        "BASE_MODEL set)",
    )
    return parser.parse_args(argv)


def embedded_models(choice: str) -> bool:
    if choice != "auto":
        return choice == "embedded"
    return not os.environ.get("BASE_MODEL") and shutil.which("nvidia-smi") is None


def main(argv=None) -> None:
    args = parse_arguments(argv)
    settings = StudioSettings.from_env()
    if args.host != LOCAL_HOST and settings.token is None:
        raise SystemExit(
            f"The studio listens on {args.host} only with a token: set SDXL_TUNER_STUDIO_TOKEN "
            "and give visitors the address with ?token=<it>."
        )
    # Stopped by a signal, the studio still stops the servers it started (the with below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.ExitStack() as stack:
        if bool(args.predict_url) != bool(args.train_url):
            raise SystemExit("Give both --predict-url and --train-url, or neither.")
        embedded = embedded_models(args.models)
        if args.predict_url:
            pair = ServerPair(args.predict_url, args.train_url)
        else:
            started = StartedServers(args.container, embedded, args.data / "logs")
            pair = stack.enter_context(started)
        server = StudioServer((args.host, args.port), settings.token)
        port = server.server_address[1]
        public_url = args.public_url or f"http://{LOCAL_HOST}:{port}"
        server.studio = Studio(
            CogServer(pair.predict_url, "predict"),
            CogServer(pair.train_url, "train"),
            args.data,
            public_url,
            settings.token,
            settings.price_per_gpu_hour,
            family_base_models(args.container, embedded),
        )
        print(
            f"Studio: http://{args.host}:{port}/" + ("?token=…" if settings.token else ""),
            flush=True,
        )
        print(f"Cog servers: predict {pair.predict_url}, train {pair.train_url}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


if __name__ == "__main__":
    main()
