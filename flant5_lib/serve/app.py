"""The Vertex AI custom prediction container: a FastAPI app with admission control and micro-batched generation.

Vertex contract: it sends `{"instances": [...], "parameters": {...}}` to AIP_PREDICT_ROUTE on AIP_HTTP_PORT, polls
AIP_HEALTH_ROUTE until it answers 200, and may point AIP_STORAGE_URI at the model's gs:// folder. Every error body is
`{"error": "..."}` without local paths or bucket names. The event loop only routes and validates small bodies:
bigger bodies are parsed, and every dialogue tokenised, in a small thread pool, and generation runs in the
micro-batcher's worker, so `/health` stays fast under any payload. Work beyond what can finish before the deadline is refused at once (429 + Retry-After). A model that
cannot load ends the process with exit code 1 (after bounded retries of the download), so Vertex fails the deployment
and Kubernetes restarts the pod instead of keeping a container that is alive but never ready.

The modules: `settings` (what is read at start-up), `schemas` (bodies and their bounds), `middleware`, `telemetry`
(logs and metrics), `state` (the model holder), `routes`; this one assembles the app (`create_app`) and runs it.
"""

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from flant5_lib.serve import routes
from flant5_lib.serve.middleware import MAX_BODY_BYTES, BodyLimitMiddleware, RequestContextMiddleware
from flant5_lib.serve.schemas import ErrorBody, PredictResponse
from flant5_lib.serve.settings import DEFAULT_MODEL_DIRS, ENV_PREFIX, ServeSettings
from flant5_lib.serve.state import State
from flant5_lib.serve.telemetry import setup_logging

__all__ = ["DEFAULT_MODEL_DIRS", "ENV_PREFIX", "ServeSettings", "State", "create_app", "run"]

SWITCH_INTERVAL_S = 0.0005


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
    app.add_exception_handler(StarletteHTTPException, routes.on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, routes.on_bug)

    errors: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 408, 413, 422, 429, 503, 504)}
    app.add_api_route(settings.live_route, routes.live, methods=["GET", "HEAD"], summary="Liveness (answers while the model loads)")
    app.add_api_route(settings.health_route, routes.health, methods=["GET", "HEAD"], summary="Readiness: 200 once the model is warm",
                      responses={503: {"model": ErrorBody}})
    app.add_api_route("/metrics", routes.metrics, methods=["GET"], include_in_schema=False)
    # The body is read and validated off the event loop, so FastAPI does not see a body parameter: the schema is
    # given here, with the server's limits in it.
    body_schema = state.request_model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = body_schema.pop("$defs", {})
    app.add_api_route(settings.predict_route, routes.predict, methods=["POST"], response_model=PredictResponse,
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
