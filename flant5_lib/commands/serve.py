"""`flant5 serve`: the Vertex AI prediction server, run locally with the same AIP_* variables as in the container."""

from __future__ import annotations

import argparse
from pathlib import Path

from flant5_lib.config import parse_set
from flant5_lib.errors import ModelError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the prediction server (the container's app) locally")
    p.add_argument("--model", help="model folder (default: FLANT5_MODEL_DIR, AIP_STORAGE_URI, then serving/model)")
    p.add_argument("--host", default="0.0.0.0", help="interface to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (default: AIP_HTTP_PORT or 8080)")
    p.add_argument("--params", help="YAML params file for the serve_* fields (default: FLANT5_PARAMS)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. serve_backend=ctranslate2")
    p.add_argument("--device", help="cpu or cuda (default: GPU when present)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from flant5_lib.serve.app import DEFAULT_MODEL_DIRS, ServeSettings, run

    settings = ServeSettings.from_env(parse_set(args.set), params_file=args.params, model_dir=args.model, device=args.device)
    # Fail fast on the command line (in a container the server starts anyway and health explains the failure).
    if settings.model_dir and not (Path(settings.model_dir) / "config.json").is_file():
        raise ModelError(f"--model {settings.model_dir}: no config.json there; pass a saved model folder")
    if not (settings.model_dir or settings.storage_uri or any((Path(d) / "config.json").is_file() for d in DEFAULT_MODEL_DIRS)):
        raise ModelError("no model: pass --model DIR, or set FLANT5_MODEL_DIR or AIP_STORAGE_URI")
    run(settings, host=args.host, port=args.port)
    return 0
