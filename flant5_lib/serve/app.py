"""The Vertex AI custom prediction container: a FastAPI app with micro-batched generation.

Vertex contract: it sends `{"instances": [...], "parameters": {...}}` to AIP_PREDICT_ROUTE on AIP_HTTP_PORT, polls
AIP_HEALTH_ROUTE until it answers 200, and may point AIP_STORAGE_URI at the model's gs:// folder. Requests and
responses are pydantic models (so /openapi.json is real and fuzzable); every error is `{"error": "..."}`.
Deliberately no `from __future__ import annotations`: FastAPI must see the request model built in `create_app`.
"""

import asyncio
import contextlib
import copy
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from flant5_lib.config import Params, load_params, parse_set
from flant5_lib.errors import ModelError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_500_000  # Vertex AI rejects online prediction requests over 1.5 MB
DEFAULT_MODEL_DIRS = ("model", "serving/model")  # the Dockerfile copies a baked-in model to serving/model
ENV_PREFIX = "FLANT5_"  # FLANT5_SERVE_MAX_BATCH_SIZE=1 sets serve_max_batch_size, and so on


class ServeSettings(BaseModel):
    """Everything the server reads at start-up: the AIP_* variables Vertex sets, plus the serve_* Params."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_dir: str | None = Field(None, description="Local model folder (--model / FLANT5_MODEL_DIR).")
    storage_uri: str | None = Field(None, description="AIP_STORAGE_URI: gs:// model folder downloaded at start-up.")
    http_port: int = Field(8080, description="AIP_HTTP_PORT.")
    health_route: str = Field("/health", description="AIP_HEALTH_ROUTE.")
    predict_route: str = Field("/predict", description="AIP_PREDICT_ROUTE.")
    live_route: str = Field("/live", description="Liveness: answers at once, even while the model loads.")
    device: str | None = Field(None, description="FLANT5_DEVICE (cpu, cuda); default: GPU when present.")
    params: Params = Field(default_factory=Params, description="serve_* limits and generation defaults.")
    load_hook: Callable[[], None] | None = Field(None, exclude=True, description="Called before loading (tests).")

    @classmethod
    def from_env(
        cls, overrides: dict[str, Any] | None = None, params_file: str | None = None, **fields: Any
    ) -> "ServeSettings":
        """AIP_* variables, FLANT5_PARAMS (YAML file), FLANT5_SERVE_* variables, then explicit overrides."""
        env = os.environ
        from_env = {
            name: value
            for name in Params.model_fields
            if name.startswith("serve_") and (value := env.get(ENV_PREFIX + name.upper())) is not None
        }
        params = load_params(params_file or env.get("FLANT5_PARAMS") or None, {**parse_set([f"{k}={v}" for k, v in from_env.items()]), **(overrides or {})})
        values: dict[str, Any] = {
            "model_dir": env.get("FLANT5_MODEL_DIR") or None,
            "storage_uri": env.get("AIP_STORAGE_URI") or None,
            "http_port": int(env.get("AIP_HTTP_PORT") or 8080),
            "health_route": env.get("AIP_HEALTH_ROUTE") or "/health",
            "predict_route": env.get("AIP_PREDICT_ROUTE") or "/predict",
            "device": env.get("FLANT5_DEVICE") or None,
        }
        values.update({k: v for k, v in fields.items() if v is not None})
        return cls(params=params, **values)


# --- request / response bodies ------------------------------------------------------------------

Dialogue = Annotated[str, StringConstraints(pattern=r"\S")]  # at least one visible character


class Instance(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    dialogue: Dialogue


class PredictResponse(BaseModel):
    predictions: list[str] = Field(description="One summary per instance, in order.")
    truncated: list[int] = Field(description="Indices of instances cut to the model's max_source_length (as in training).")


class ErrorBody(BaseModel):
    error: str


def _request_models(p: Params) -> type[BaseModel]:
    """Request body with this server's bounds in the schema (so clients and fuzzers see the real limits)."""
    default_max = min(p.max_new_tokens, p.serve_max_new_tokens_limit)

    class Parameters(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        max_new_tokens: int | None = Field(None, ge=1, le=p.serve_max_new_tokens_limit, description=f"default {default_max}")
        min_new_tokens: int | None = Field(None, ge=0, le=p.serve_max_new_tokens_limit, description="default 0")
        num_beams: int | None = Field(None, ge=1, le=p.serve_max_beams_limit, description=f"default {p.num_beams}")

        @model_validator(mode="after")
        def _min_le_max(self) -> "Parameters":
            top = self.max_new_tokens or default_max
            if self.min_new_tokens is not None and self.min_new_tokens > top:
                raise ValueError(f"min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens ({top})")
            return self

        def gen_kwargs(self, model_params: Params) -> dict[str, Any]:
            from flant5_lib.inference import generation_kwargs

            return generation_kwargs(
                model_params,
                max_new_tokens=self.max_new_tokens or default_max,
                min_new_tokens=self.min_new_tokens,
                num_beams=self.num_beams or min(p.num_beams, p.serve_max_beams_limit),
            )

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        instances: list[Dialogue | Instance] = Field(
            min_length=1, max_length=p.serve_max_instances, description='Dialogue strings or {"dialogue": "..."} objects.'
        )
        parameters: Parameters = Field(default_factory=Parameters)

    return PredictRequest


# --- errors -------------------------------------------------------------------------------------


class BodyTooLarge(StarletteHTTPException):
    """Raised while the body streams in; an HTTPException so FastAPI's body parsing passes it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes (Vertex AI's 1.5 MB limit); send fewer instances per request")


class BodyLimitMiddleware:
    """413 on a Content-Length over the limit AND on a streamed (chunked) body that grows past it."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _send_error(send, 413, BodyTooLarge(self.max_bytes).detail)
        seen, started = 0, False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyTooLarge as err:
            if not started:
                await _send_error(send, 413, err.detail)


async def _send_error(send: Callable[..., Any], status: int, message: str) -> None:
    response = JSONResponse({"error": message}, status_code=status)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(err: RequestValidationError) -> tuple[int, str]:
    """400 for a body that is not JSON; otherwise 422 naming each bad field once."""
    parts: list[str] = []
    for e in err.errors():
        if e.get("type") == "json_invalid":
            return 400, f"request body is not valid JSON ({e.get('ctx', {}).get('error', e.get('msg'))})"
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if not loc and e.get("type") == "missing":
            return 400, 'request body is empty; send {"instances": ["dialogue", ...], "parameters": {...}}'
        if len(loc) >= 2 and loc[0] == "instances" and loc[1].isdigit():
            text = f"instances[{loc[1]}]: must be a non-empty dialogue string or {{\"dialogue\": \"...\"}}"
        else:
            text = f"{'.'.join(loc) or 'body'}: {e.get('msg', 'invalid').removeprefix('Value error, ')}"
            if e.get("type") == "extra_forbidden":
                text = f"{'.'.join(loc)}: unknown field (allowed: instances, parameters.max_new_tokens, min_new_tokens, num_beams)"
        if text not in parts:
            parts.append(text)
    return 422, "; ".join(parts) or "invalid request"


# --- the model holder ---------------------------------------------------------------------------


class _State:
    """Loads the model in a thread at start-up; health says 503 until one warm-up prediction has run."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.status: Literal["loading", "ready", "failed"] = "loading"
        self.error: str | None = None
        self.backend: Any = None
        self.encoder: Any = None  # a private tokenizer copy: Rust tokenizers must not be shared across threads
        self.model_params = settings.params
        self.model_source = ""
        self.batcher: Any = None

    def _resolve_model_dir(self) -> Path:
        s = self.settings
        if s.model_dir:
            self.model_source = s.model_dir
            return Path(s.model_dir)
        if s.storage_uri:
            from flant5_lib import storage

            local = Path(tempfile.mkdtemp(prefix="flant5-serve-")) / "model"
            self.model_source = s.storage_uri
            log.info("downloading model from AIP_STORAGE_URI=%s", s.storage_uri)
            return storage.download_dir(s.storage_uri, local)
        for candidate in DEFAULT_MODEL_DIRS:
            if (Path(candidate) / "config.json").is_file():
                self.model_source = candidate
                return Path(candidate)
        raise ModelError(
            "no model: pass --model DIR, set FLANT5_MODEL_DIR or AIP_STORAGE_URI, or bake one into serving/model"
        )

    def _load_sync(self) -> None:
        from flant5_lib.serve.backends import load_backend
        from flant5_lib.preprocess import load_preprocessing

        if self.settings.load_hook is not None:
            self.settings.load_hook()
        started = time.monotonic()
        model_dir = self._resolve_model_dir()
        if not (model_dir / "config.json").is_file():
            raise ModelError(f"{model_dir}: no config.json; is this a model folder?")
        self.model_params = load_preprocessing(model_dir, self.settings.params)
        self.backend = load_backend(model_dir, self.model_params, device=self.settings.device)
        self.encoder = copy.deepcopy(self.backend.tokenizer)
        log.info(
            "loaded model %s (from %s) on device %s with backend %s in %.1f s",
            model_dir, self.model_source, self.backend.device, self.backend.name, time.monotonic() - started,
        )

    async def load(self) -> None:
        from flant5_lib.serve.batching import MicroBatcher

        try:
            await asyncio.to_thread(self._load_sync)
            p = self.settings.params
            self.batcher = MicroBatcher(
                self.backend.generate, max_batch_size=p.serve_max_batch_size, max_wait_s=p.serve_max_wait_ms / 1000
            )
            self.batcher.start()
            started = time.monotonic()
            ids, _ = self.encode(["Anna: Are we still on for lunch?\nBen: Yes, see you at noon."])
            await self.batcher.submit(ids, {"max_new_tokens": 4, "num_beams": 1, "do_sample": False})
            self.status = "ready"
            log.info("warm-up prediction done in %.2f s; ready (batch <= %d, wait <= %.0f ms)",
                     time.monotonic() - started, p.serve_max_batch_size, p.serve_max_wait_ms)
        except Exception as err:  # health keeps answering 503 with the reason; the logs have the traceback
            self.status, self.error = "failed", f"{type(err).__name__}: {err}".splitlines()[0]
            log.exception("model failed to load")

    def encode(self, dialogues: list[str]) -> tuple[list[list[int]], list[bool]]:
        from flant5_lib.preprocess import encode_sources

        return encode_sources(self.encoder, dialogues, self.model_params)


# --- the app ------------------------------------------------------------------------------------


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The prediction app; the model starts loading (in the background) when the server starts."""
    if not logging.getLogger().handlers:  # under plain uvicorn nothing else sets up logging for our start-up lines
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings or ServeSettings.from_env()
    state = _State(settings)
    PredictRequest = _request_models(settings.params)
    deadline = settings.params.serve_deadline_s

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(state.load(), name="load-model")
        yield
        loader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loader
        if state.batcher is not None:
            await state.batcher.stop()

    app = FastAPI(title="Flan-T5 dialogue summariser", version="1", lifespan=lifespan)
    app.state.serve = state
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, err: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(err)
        return _error(status, message)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def _on_bug(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, "internal error (see the server log)")

    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody} for code in (400, 413, 422, 503, 504)
    }

    async def live() -> dict[str, str]:
        return {"status": "alive"}

    async def health() -> Any:
        if state.status == "ready":
            return {"status": "ready", "model": state.model_source, "backend": state.backend.name, "device": state.backend.device}
        if state.status == "failed":
            return _error(503, f"model failed to load: {state.error}")
        return _error(503, "model is loading")

    async def predict(body: PredictRequest) -> PredictResponse:  # type: ignore[valid-type]
        if state.status != "ready":
            return _error(503, "model is loading" if state.status == "loading" else f"model failed to load: {state.error}")
        dialogues = [i if isinstance(i, str) else i.dialogue for i in body.instances]
        ids, cut = state.encode(dialogues)
        truncated = [n for n, c in enumerate(cut) if c]
        if truncated:
            log.warning("instances %s truncated to max_source_length=%d", truncated, state.model_params.max_source_length)
        try:
            texts = await asyncio.wait_for(state.batcher.submit(ids, body.parameters.gen_kwargs(state.model_params)), deadline)
        except asyncio.TimeoutError:
            return _error(504, f"prediction took over serve_deadline_s={deadline:g} s; send fewer instances or lower max_new_tokens")
        return PredictResponse(predictions=texts, truncated=truncated)

    app.add_api_route(settings.live_route, live, methods=["GET"], summary="Liveness (answers while the model loads)")
    app.add_api_route(settings.health_route, health, methods=["GET"], summary="Readiness: 200 once the model is warm",
                      responses={503: {"model": ErrorBody}})
    app.add_api_route(settings.predict_route, predict, methods=["POST"], response_model=PredictResponse,
                      summary="Summarise dialogues", responses=errors)
    return app


def run(settings: ServeSettings, host: str = "0.0.0.0", port: int | None = None) -> None:
    """What `flant5 serve` runs: uvicorn with this app in the current process."""
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port or settings.http_port, log_config=None)
