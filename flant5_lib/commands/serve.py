"""`flant5 serve`: the Vertex AI prediction server, run locally with the same AIP_* variables as in the container."""

from __future__ import annotations

import argparse
from pathlib import Path

from flant5_lib.config import parse_set
from flant5_lib.errors import ModelError


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()  # full model or LoRA adapter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="run the prediction server (the container's app) locally",
        description="Run the Vertex AI prediction server (the container's app) on this machine, on 127.0.0.1 unless "
                    "--host says otherwise.",
        epilog="examples:\n  flant5 serve --model runs/x/model --port 8080\n"
               "  flant5 serve --model runs/x/model --set serve_backend=ctranslate2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="model folder (default: FLANT5_MODEL_DIR, AIP_STORAGE_URI, then serving/model)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; the container uses 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (default: AIP_HTTP_PORT or 8080)")
    p.add_argument("--params", help="YAML params file for the serve_* fields (default: FLANT5_PARAMS)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. serve_backend=ctranslate2")
    p.add_argument("--device", help="cpu or cuda (default: GPU when present)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from flant5_lib.serve.app import DEFAULT_MODEL_DIRS, ServeSettings, run

    settings = ServeSettings.from_env(parse_set(args.set), params_file=args.params, model_dir=args.model, device=args.device)
    # Fail fast on the command line (in a container the server starts, and exits non-zero when the model cannot load).
    if settings.model_dir and not _is_model_dir(Path(settings.model_dir)):
        raise ModelError(f"--model {settings.model_dir}: no config.json (nor adapter_config.json) there; pass a saved model folder")
    if not (settings.model_dir or settings.storage_uri or any(_is_model_dir(Path(d)) for d in DEFAULT_MODEL_DIRS)):
        raise ModelError("no model: pass --model DIR, or set FLANT5_MODEL_DIR or AIP_STORAGE_URI")
    run(settings, host=args.host, port=args.port)
    return 0
