"""The routes: module-level functions; the model holder comes in through a FastAPI dependency (`get_state`)."""

import asyncio
import logging
import time
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from flant5_lib.serve.middleware import error_response
from flant5_lib.serve.schemas import ClientError
from flant5_lib.serve.state import State

log = logging.getLogger(__name__)

INLINE_PARSE_BYTES = 65_536  # bodies up to this size are validated on the event loop (well under a millisecond)


def get_state(request: Request) -> State:
    return request.app.state.serve


def _not_ready(state: State) -> JSONResponse:
    if state.status == "failed":
        return error_response(503, f"model failed to load ({state.error}); see the server log")
    return error_response(503, "model is loading", {"Retry-After": "10"})


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
        return error_response(429, full.message, {"Retry-After": str(full.retry_after_s), "Connection": "close"})
    raw = await request.body()
    try:
        # A small body parses in well under a millisecond: a thread hop would cost more than it saves, and a refusal
        # under overload must be fast. Bigger bodies (up to 1.5 MB) are parsed in the pool.
        job = state.parse(raw) if len(raw) <= INLINE_PARSE_BYTES else await state.off_loop(state.parse, raw)
    except ClientError as err:
        return error_response(err.status, err.message)
    refused = state.admission.admit(len(job.dialogues), job.cost)
    if refused is not None:
        state.metrics.rejected.labels(refused.reason).inc()
        if refused.reason == "too_costly":  # not a matter of waiting: the request must shrink
            return error_response(413, refused.message)
        return error_response(429, refused.message, {"Retry-After": str(refused.retry_after_s)})
    deadline = state.settings.params.serve_deadline_s
    try:
        ids, cut = await state.off_loop(state.encode, job.dialogues)
        left = deadline - (time.monotonic() - started)
        texts = await asyncio.wait_for(state.batcher.submit(ids, job.gen_kwargs), max(left, 0.001))
    except asyncio.TimeoutError:
        state.metrics.rejected.labels("deadline").inc()
        return error_response(504, f"prediction took over serve_deadline_s={deadline:g} s; send fewer instances or lower max_new_tokens")
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



async def on_http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    return error_response(err.status_code, str(err.detail), err.headers)  # keeps Allow on 405, Connection on 408


async def on_bug(request: Request, err: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    return error_response(500, "internal error (see the server log)")

