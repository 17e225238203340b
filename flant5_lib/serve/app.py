"""The Vertex AI custom prediction container: a FastAPI app with admission control and micro-batched generation.

Vertex contract: it sends `{"instances": [...], "parameters": {...}}` to AIP_PREDICT_ROUTE on AIP_HTTP_PORT, polls
AIP_HEALTH_ROUTE until it answers 200, and may point AIP_STORAGE_URI at the model's gs:// folder. Every error body is
`{"error": "..."}` without local paths or bucket names. The event loop only routes and validates small bodies:
bigger bodies are parsed, and every dialogue tokenised, in a small thread pool, and generation runs in the
micro-batcher's worker, so `/health` stays fast under any payload. Work beyond what can finish before the deadline is refused at once (429 + Retry-After). A model that
cannot load ends the process with exit code 1 (after bounded retries of the download), so Vertex fails the deployment
and Kubernetes restarts the pod instead of keeping a container that is alive but never ready.
"""

import asyncio
import contextlib
import contextvars
import copy
import datetime
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from flant5_lib.config import Params, load_params, parse_set
from flant5_lib.errors import ModelError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_500_000  # Vertex AI rejects online prediction requests over 1.5 MB
DEFAULT_MODEL_DIRS = ("model", "serving/model")  # the Dockerfile copies a baked-in model to serving/model
ENV_PREFIX = "FLANT5_"  # FLANT5_SERVE_MAX_BATCH_SIZE=1 sets serve_max_batch_size, and so on
CHARS_PER_TOKEN_CUT = 10  # text past max_source_length x this many characters is cut before tokenising (see _cut)
_BLANK_RUN = re.compile(r"[ \t]{2,}")
SWITCH_INTERVAL_S = 0.0005
INLINE_PARSE_BYTES = 65_536  # bodies up to this size are validated on the event loop (well under a millisecond)
EXIT_LOAD_FAILED = 1
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
WARMUP_DIALOGUE = "Anna: Are we still on for lunch?\nBen: Yes, see you at noon."

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
T = TypeVar("T")


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
    exit_on_failure: bool = Field(True, description="End the process (code 1) when the model cannot load. Tests "
                                  "that run the app inside their own process turn it off.")
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
        params = load_params(params_file or env.get("FLANT5_PARAMS") or None,
                             {**parse_set([f"{k}={v}" for k, v in from_env.items()]), **(overrides or {})})
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


# --- logging: JSON lines with `severity` for Cloud Logging, each carrying the request id ----------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line; Cloud Logging reads `severity` (otherwise every stderr line shows as an error)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(),
        }
        if (rid := request_id.get()) is not None:
            entry["request_id"] = rid
        if record.exc_info:
            entry["message"] += "\n" + self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging() -> None:
    """JSON logs on stdout when nothing set logging up (the container's `uvicorn main:app`); `flant5 serve` and test
    harnesses keep theirs. uvicorn's own lines go through the same handler; its access log is replaced by ours."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate, access.disabled = False, True


# --- metrics -----------------------------------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics in a registry of their own (one per app, so several apps can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("flant5_requests", "HTTP requests by route and status.", ["route", "status"], registry=r)
        self.latency = Histogram("flant5_request_duration_seconds", "Request latency by route.", ["route"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60))
        self.rejected = Counter("flant5_rejected_requests", "Predictions refused before any work, by reason.",
                                ["reason"], registry=r)
        self.queue_dialogues = Gauge("flant5_queue_dialogues", "Dialogues admitted and not yet answered.", registry=r)
        self.queue_cost = Gauge("flant5_queue_cost", "Decoder steps admitted and not yet answered.", registry=r)
        self.queue_cost_limit = Gauge("flant5_queue_cost_limit", "Current bound on queue_cost.", registry=r)
        self.batch_size = Histogram("flant5_batch_size", "Dialogues per generate call.", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_seconds = Histogram("flant5_batch_duration_seconds", "Time per generate call.", registry=r,
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40))
        self.generated_tokens = Counter("flant5_generated_tokens", "Summary tokens generated.", registry=r)
        self.tokens_per_second = Gauge("flant5_generated_tokens_per_second", "Over the last batch.", registry=r)
        self.truncated = Counter("flant5_truncated_dialogues", "Dialogues cut to max_source_length.", registry=r)
        self.ready = Gauge("flant5_model_ready", "1 once the model is loaded and warm.", registry=r)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# --- request / response bodies ----------------------------------------------------------------------------------

Dialogue = Annotated[str, StringConstraints(pattern=r"\S")]  # at least one visible character


def _integral(value: Any) -> Any:
    """2.0 -> 2: Vertex's SDK sends every number as a protobuf double; 2.5 stays a float and is refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_integral)]


class Instance(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    dialogue: Dialogue


class PredictResponse(BaseModel):
    predictions: list[str | list[str]] = Field(
        description="One summary per instance, in order; a list of summaries for an instance that is a list.")
    truncated: list[int] = Field(description="Indices of instances cut to the model's max_source_length (as in training).")


class ErrorBody(BaseModel):
    error: str


def _request_model(p: Params) -> type[BaseModel]:
    """Request body with this server's bounds in the schema (so clients and fuzzers see the real limits)."""

    class Parameters(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        max_new_tokens: Integer | None = Field(None, ge=1, le=p.serve_max_new_tokens_limit,
                                               description="default: the model's generation settings")
        min_new_tokens: Integer | None = Field(None, ge=0, le=p.serve_max_new_tokens_limit,
                                               description="default 0; clamped to max_new_tokens")
        num_beams: Integer | None = Field(None, ge=1, le=p.serve_max_beams_limit,
                                          description="default: the model's generation settings")

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        instances: list[Dialogue | Instance | Annotated[list[Dialogue], Field(min_length=1, max_length=p.serve_max_instances)]] = Field(
            min_length=1, max_length=p.serve_max_instances,
            description='Dialogue strings, {"dialogue": "..."} objects, or lists of dialogue strings '
                        f"(at most {p.serve_max_instances} dialogues in all).")
        parameters: Parameters = Field(default_factory=Parameters)

    return PredictRequest


def _gen_kwargs(parameters: Any, model_params: Params, limits: Params) -> dict[str, Any]:
    """The request's options over the model's defaults, clamped to the server's limits (min <= max included)."""
    from flant5_lib.inference import generation_kwargs

    kw = generation_kwargs(model_params, max_new_tokens=parameters.max_new_tokens,
                           min_new_tokens=parameters.min_new_tokens, num_beams=parameters.num_beams)
    kw["max_new_tokens"] = min(int(kw["max_new_tokens"]), limits.serve_max_new_tokens_limit)
    kw["num_beams"] = min(int(kw.get("num_beams") or 1), limits.serve_max_beams_limit)
    if kw.get("min_new_tokens"):
        kw["min_new_tokens"] = min(int(kw["min_new_tokens"]), kw["max_new_tokens"])
    return kw


# --- errors ------------------------------------------------------------------------------------------------------


class ClientError(Exception):
    """A request the client must change: a 4xx with a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class BodyError(StarletteHTTPException):
    """Raised while the body streams in; an HTTPException so FastAPI passes it to the handler as a 4xx."""


def _body_too_large(limit: int) -> BodyError:
    return BodyError(413, f"request body over {limit} bytes (Vertex AI's 1.5 MB limit); send fewer instances per request")


class BodyLimitMiddleware:
    """413 on a Content-Length over the limit AND on a streamed body that grows past it; 408 on a body that does not
    arrive in time (a client announcing more bytes than it sends would otherwise hold the connection for ever)."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES, timeout_s: float = 10.0) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _send_error(send, 413, _body_too_large(self.max_bytes).detail)
        seen, started, complete = 0, False, False
        deadline = time.monotonic() + self.timeout_s

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen, complete
            if complete:  # the body is in: later receives only wait for a disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                raise BodyError(408, f"request body not received within {self.timeout_s:g} s",
                                headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > self.max_bytes:
                    raise _body_too_large(self.max_bytes)
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyError as err:
            if not started:
                await _send_error(send, err.status_code, err.detail, err.headers)


class RequestContextMiddleware:
    """A request id (the client's X-Request-ID when sane, else a new one) in the response header and every log line;
    the server-side time in a Server-Timing header; one access line per request; request counts and latency per route."""

    def __init__(self, app: Any, routes: dict[str, str], metrics: Metrics) -> None:
        self.app, self.routes, self.metrics = app, routes, metrics

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        rid = given if _REQUEST_ID_OK.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        status, started = 500, time.perf_counter()

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                timing = f"app;dur={1000 * (time.perf_counter() - started):.1f}".encode()  # server-side time, for clients
                message = {**message, "headers": [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), rid.encode()),
                                                  (b"server-timing", timing)]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = self.routes.get(scope["path"], "other")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            if route not in ("health", "live", "metrics") or status >= 400:  # probes every few seconds are noise
                log.info("%s %s %d %.1f ms", scope["method"], route, status, 1000 * elapsed)
            request_id.reset(token)


async def _send_error(send: Callable[..., Any], status: int, message: str, headers: dict[str, str] | None = None) -> None:
    response = _error(status, message, headers)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(errors: Sequence[Any]) -> tuple[int, str]:
    """400 for a body that is not JSON; otherwise 422 naming each bad field once."""
    parts: list[str] = []
    for e in errors:
        if e.get("type") == "json_invalid":
            return 400, f"request body is not valid JSON ({e.get('ctx', {}).get('error', e.get('msg'))})"
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if len(loc) >= 2 and loc[0] == "instances" and loc[1].isdigit():
            text = (f"instances[{loc[1]}]: must be a non-empty dialogue string, {{\"dialogue\": \"...\"}}, "
                    "or a non-empty list of dialogue strings")
        else:
            text = f"{'.'.join(loc) or 'body'}: {e.get('msg', 'invalid').removeprefix('Value error, ')}"
            if e.get("type") == "extra_forbidden":
                text = f"{'.'.join(loc)}: unknown field (allowed: instances, parameters.max_new_tokens, min_new_tokens, num_beams)"
        if text not in parts:
            parts.append(text)
    return 422, "; ".join(parts) or "invalid request"


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0]


# --- the model holder --------------------------------------------------------------------------------------------


@dataclass
class Job:
    """A parsed request: its dialogues in order, how they map back to instances, and what generation costs."""

    dialogues: list[str]
    shape: list[int | None]  # per instance: None = one dialogue, n = a list of n dialogues
    gen_kwargs: dict[str, Any]
    cost: int


def _cut(dialogue: str, max_chars: int) -> str:
    """The head of an over-long dialogue, ending at a word boundary, so its tokens are those of the full text."""
    if len(dialogue) <= max_chars:
        return dialogue
    head = dialogue[:max_chars]
    space = max(head.rfind(c) for c in " \n\t")
    return head[:space] if space > 0 else head


class State:
    """Loads the model in a thread at start-up; health says 503 until one warm-up batch has run."""

    def __init__(self, settings: ServeSettings) -> None:
        from flant5_lib.serve.batching import Admission

        p = settings.params
        self.settings = settings
        self.status: Literal["loading", "ready", "failed"] = "loading"
        self.error: str | None = None
        self.backend: Any = None
        self.model_params = p
        self.batcher: Any = None
        self.metrics = Metrics()
        self.admission = Admission(max_dialogues=p.serve_max_queue_dialogues or 4 * p.serve_max_batch_size,
                                   max_cost=p.serve_max_queue_cost, budget_s=p.serve_deadline_s / 2,
                                   free_dialogues=p.serve_max_batch_size)
        self.metrics.queue_dialogues.set_function(lambda: self.admission.dialogues)
        self.metrics.queue_cost.set_function(lambda: self.admission.cost)
        self.metrics.queue_cost_limit.set_function(lambda: self.admission.max_cost)
        self.request_model = _request_model(p)
        # Parsing and tokenising: off the event loop, two at a time (a 1.5 MB body takes milliseconds to seconds).
        self.cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="parse")
        self._local = threading.local()  # a tokenizer copy per thread: Rust tokenizers must not be shared across threads
        self.download_root: Path | None = None
        self.exit_code = 0

    # loading

    def _download(self, uri: str) -> Path:
        """The gs:// folder in a temporary folder (removed at shutdown); transient failures retried with backoff."""
        from flant5_lib import storage

        self.download_root = Path(tempfile.mkdtemp(prefix="flant5-serve-"))
        attempts = self.settings.params.serve_load_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                log.info("downloading the model from AIP_STORAGE_URI (attempt %d of %d)", attempt, attempts)
                return storage.download_dir(uri, self.download_root / "model")
            except Exception as err:
                if attempt == attempts:
                    raise ModelError(f"model download failed after {attempts} attempts: {_one_line(err)}") from err
                delay = min(2 ** (attempt - 1), 30)
                log.warning("model download failed (%s); retrying in %d s", _one_line(err), delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _resolve_model_dir(self) -> Path:
        s = self.settings
        if s.model_dir:
            return Path(s.model_dir)
        if s.storage_uri:
            return self._download(s.storage_uri)
        for candidate in DEFAULT_MODEL_DIRS:
            if (Path(candidate) / "config.json").is_file() or (Path(candidate) / "adapter_config.json").is_file():
                return Path(candidate)
        raise ModelError(
            "no model: pass --model DIR, set FLANT5_MODEL_DIR or AIP_STORAGE_URI, or bake one into serving/model"
        )

    def _load_sync(self) -> None:
        from flant5_lib.preprocess import load_preprocessing
        from flant5_lib.serve.backends import load_backend

        if self.settings.load_hook is not None:
            self.settings.load_hook()
        started = time.monotonic()
        model_dir = self._resolve_model_dir()
        if not ((model_dir / "config.json").is_file() or (model_dir / "adapter_config.json").is_file()):
            raise ModelError(f"{model_dir}: no config.json (nor a LoRA adapter_config.json); is this a model folder?")
        self.model_params = load_preprocessing(model_dir, self.settings.params)
        self.backend = load_backend(model_dir, self.model_params, device=self.settings.device)
        log.info("loaded model %s on device %s with backend %s in %.1f s",
                 model_dir, self.backend.device, self.backend.name, time.monotonic() - started)

    async def load(self) -> None:
        from flant5_lib.serve.batching import MicroBatcher

        p = self.settings.params
        try:
            await asyncio.to_thread(self._load_sync)
            self.batcher = MicroBatcher(self._run_batch, max_batch_size=p.serve_max_batch_size,
                                        max_wait_s=p.serve_max_wait_ms / 1000, on_batch=self._on_batch)
            self.batcher.start()
            started = time.monotonic()
            # Warm-up: a first call pays the one-time costs; then one batch like the real ones gives the admission
            # limit its first throughput figure.
            for n, tokens in ((1, 2), (min(8, p.serve_max_batch_size), 8)):
                self.admission.rate = None  # only the last warm-up batch counts
                ids, _ = await self.off_loop(self.encode, [WARMUP_DIALOGUE] * n)
                await self.batcher.submit(ids, {"max_new_tokens": tokens, "min_new_tokens": tokens, "num_beams": 1,
                                                "do_sample": False})
            self.status = "ready"
            self.metrics.ready.set(1)
            log.info("warm-up done in %.2f s; ready (batch <= %d, wait <= %g ms, queue <= %d dialogues / %d decoder steps)",
                     time.monotonic() - started, p.serve_max_batch_size, p.serve_max_wait_ms,
                     self.admission.max_dialogues, self.admission.max_cost)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.status, self.error = "failed", type(err).__name__
            log.debug("model load traceback", exc_info=True)
            if not self.settings.exit_on_failure:
                log.error("model failed to load: %s", _one_line(err))
                return
            log.error("model failed to load, exiting with code %d: %s", EXIT_LOAD_FAILED, _one_line(err))
            self.exit_code = EXIT_LOAD_FAILED
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down; the lifespan then exits with the code

    def close(self) -> None:
        self.cpu.shutdown(wait=False, cancel_futures=True)
        if self.download_root is not None:
            shutil.rmtree(self.download_root, ignore_errors=True)  # a downloaded model is never left behind

    # per request

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU work in the parse pool, keeping the request's context (its id in the log lines)."""
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self.cpu, ctx.run, fn, *args)

    def _tokenizer(self) -> Any:
        tok = getattr(self._local, "tokenizer", None)
        if tok is None:
            tok = self._local.tokenizer = copy.deepcopy(self.backend.tokenizer)
        return tok

    def parse(self, raw: bytes) -> Job:
        """The body validated against the request model, flattened to dialogues (a ClientError when it is bad)."""
        if not raw.strip():
            raise ClientError(400, 'request body is empty; send {"instances": ["dialogue", ...], "parameters": {...}}')
        try:
            body: Any = self.request_model.model_validate_json(raw)
        except ValidationError as err:
            raise ClientError(*_validation_message(err.errors(include_url=False))) from None
        dialogues: list[str] = []
        shape: list[int | None] = []
        for inst in body.instances:
            if isinstance(inst, list):
                shape.append(len(inst))
                dialogues.extend(inst)
            else:
                shape.append(None)
                dialogues.append(inst if isinstance(inst, str) else inst.dialogue)
        limit = self.settings.params.serve_max_instances
        if len(dialogues) > limit:
            raise ClientError(422, f"instances: {len(dialogues)} dialogues in all; at most {limit} per request")
        from flant5_lib.serve.batching import work_cost

        kw = _gen_kwargs(body.parameters, self.model_params, self.settings.params)
        return Job(dialogues, shape, kw, work_cost(len(dialogues), kw))

    def encode(self, dialogues: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids as training made them. Text far past max_source_length is cut by characters first (the tokens
        past the limit are dropped anyway); if a cut text no longer reaches the limit, the full text is used."""
        from flant5_lib.preprocess import encode_sources

        tok, p = self._tokenizer(), self.model_params
        chars = p.max_source_length * CHARS_PER_TOKEN_CUT
        cut = [_cut(d, chars) for d in dialogues]
        ids, truncated = encode_sources(tok, cut, p)
        for i, (full, short) in enumerate(zip(dialogues, cut)):
            if short is not full and not truncated[i]:
                # The cut text fell short of the limit: the tokenizer collapses runs of blanks. Squeeze them (the same
                # tokens for such a tokenizer) and cut again, so megabytes of blanks never reach the slow path.
                squeezed = _BLANK_RUN.sub(" ", full)
                (ids[i],), (truncated[i],) = encode_sources(tok, [_cut(squeezed, chars)], p)
                if not truncated[i] and len(squeezed) > chars:
                    (ids[i],), (truncated[i],) = encode_sources(tok, [squeezed], p)
        return ids, truncated

    def _run_batch(self, ids: list[Sequence[int]], gen_kwargs: dict[str, Any]) -> list[str]:
        texts = self.backend.generate(ids, gen_kwargs)
        self._generated = sum(len(t) for t in self._tokenizer()(texts, add_special_tokens=False)["input_ids"])
        return texts

    def _on_batch(self, size: int, gen_kwargs: dict[str, Any], seconds: float) -> None:
        from flant5_lib.serve.batching import work_cost

        self.admission.observe(work_cost(size, gen_kwargs), seconds)
        self.metrics.batch_size.observe(size)
        self.metrics.batch_seconds.observe(seconds)
        generated = getattr(self, "_generated", 0)
        self.metrics.generated_tokens.inc(generated)
        self.metrics.tokens_per_second.set(generated / seconds if seconds > 0 else 0)


# --- routes: module-level functions; the state comes in through a FastAPI dependency --------------------------


def get_state(request: Request) -> State:
    return request.app.state.serve


def _not_ready(state: State) -> JSONResponse:
    if state.status == "failed":
        return _error(503, f"model failed to load ({state.error}); see the server log")
    return _error(503, "model is loading", {"Retry-After": "10"})


async def live() -> dict[str, str]:
    return {"status": "alive"}


async def health(state: State = Depends(get_state)) -> Any:
    if state.status != "ready":
        return _not_ready(state)
    return {"status": "ready", "backend": state.backend.name, "device": state.backend.device}


async def metrics(state: State = Depends(get_state)) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def predict(request: Request, state: State = Depends(get_state)) -> Response:
    started = time.monotonic()
    if state.status != "ready":
        return _not_ready(state)
    if (full := state.admission.check(1, 1)) is not None:  # not even the smallest request fits: refuse unread
        state.metrics.rejected.labels(full.reason).inc()
        return _error(429, full.message, {"Retry-After": str(full.retry_after_s), "Connection": "close"})
    raw = await request.body()
    try:
        # A small body parses in well under a millisecond: a thread hop would cost more than it saves, and a refusal
        # under overload must be fast. Bigger bodies (up to 1.5 MB) are parsed in the pool.
        job = state.parse(raw) if len(raw) <= INLINE_PARSE_BYTES else await state.off_loop(state.parse, raw)
    except ClientError as err:
        return _error(err.status, err.message)
    refused = state.admission.admit(len(job.dialogues), job.cost)
    if refused is not None:
        state.metrics.rejected.labels(refused.reason).inc()
        if refused.reason == "too_costly":  # not a matter of waiting: the request must shrink
            return _error(413, refused.message)
        return _error(429, refused.message, {"Retry-After": str(refused.retry_after_s)})
    deadline = state.settings.params.serve_deadline_s
    try:
        ids, cut = await state.off_loop(state.encode, job.dialogues)
        left = deadline - (time.monotonic() - started)
        texts = await asyncio.wait_for(state.batcher.submit(ids, job.gen_kwargs), max(left, 0.001))
    except asyncio.TimeoutError:
        state.metrics.rejected.labels("deadline").inc()
        return _error(504, f"prediction took over serve_deadline_s={deadline:g} s; send fewer instances or lower max_new_tokens")
    finally:
        state.admission.release(len(job.dialogues), job.cost)
    predictions: list[str | list[str]] = []
    truncated: list[int] = []
    at = 0
    for index, n in enumerate(job.shape):
        size = 1 if n is None else n
        predictions.append(texts[at] if n is None else texts[at : at + n])
        if any(cut[at : at + size]):
            truncated.append(index)
        at += size
    if any(cut):
        state.metrics.truncated.inc(sum(cut))
        log.info("instances %s truncated to max_source_length=%d", truncated, state.model_params.max_source_length)
    return JSONResponse({"predictions": predictions, "truncated": truncated})


# --- the app -----------------------------------------------------------------------------------------------------


async def _on_http(request: Request, err: StarletteHTTPException) -> JSONResponse:
    return _error(err.status_code, str(err.detail), err.headers)  # keeps Allow on 405, Connection on 408


async def _on_bug(request: Request, err: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    return _error(500, "internal error (see the server log)")


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The prediction app; the model starts loading (in the background) when the server starts."""
    setup_logging()
    settings = settings or ServeSettings.from_env()
    p = settings.params
    state = State(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The generation thread holds the GIL between torch calls; at Python's default 5 ms switch interval every turn
        # of the event loop may wait that long for it, and under load routing (and refusing) would crawl.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, SWITCH_INTERVAL_S))
        loader = asyncio.create_task(state.load(), name="load-model")
        yield
        sys.setswitchinterval(switch)
        loader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loader
        if state.batcher is not None:
            await state.batcher.stop()
        state.close()
        if state.exit_code:  # uvicorn would exit 0 after a SIGTERM; the platform must see the failure
            logging.shutdown()
            os._exit(state.exit_code)

    docs = "/docs" if p.serve_docs else None
    app = FastAPI(title="Flan-T5 dialogue summariser", version="1", lifespan=lifespan, docs_url=docs, redoc_url=None)
    app.state.serve = state
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES, timeout_s=p.serve_body_timeout_s)
    names = {settings.predict_route: "predict", settings.health_route: "health", settings.live_route: "live",
             "/metrics": "metrics", "/openapi.json": "openapi", **({docs: "docs"} if docs else {})}
    app.add_middleware(RequestContextMiddleware, routes=names, metrics=state.metrics)
    app.add_exception_handler(StarletteHTTPException, _on_http)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _on_bug)

    errors: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 408, 413, 422, 429, 503, 504)}
    app.add_api_route(settings.live_route, live, methods=["GET", "HEAD"], summary="Liveness (answers while the model loads)")
    app.add_api_route(settings.health_route, health, methods=["GET", "HEAD"], summary="Readiness: 200 once the model is warm",
                      responses={503: {"model": ErrorBody}})
    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    # The body is read and validated off the event loop, so FastAPI does not see a body parameter: the schema is
    # given here, with the server's limits in it.
    body_schema = state.request_model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = body_schema.pop("$defs", {})
    app.add_api_route(settings.predict_route, predict, methods=["POST"], response_model=PredictResponse,
                      summary="Summarise dialogues", responses=errors,
                      openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}}})
    openapi = app.openapi

    def openapi_with_body_models() -> dict[str, Any]:
        if app.openapi_schema is None:
            openapi().setdefault("components", {}).setdefault("schemas", {}).update(defs)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi_with_body_models  # type: ignore[method-assign]
    return app


def run(settings: ServeSettings, host: str = "127.0.0.1", port: int | None = None) -> None:
    """What `flant5 serve` runs: uvicorn with this app in the current process (loopback unless told otherwise)."""
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port or settings.http_port, log_config=None, access_log=False,
                timeout_graceful_shutdown=settings.params.serve_shutdown_timeout_s)
