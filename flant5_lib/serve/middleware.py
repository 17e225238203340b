"""ASGI middleware: the body limits (413 over 1.5 MB, 408 for a body that does not arrive) and the request context
(an id in every log line and response, Server-Timing, one access line, per-route metrics); the `{"error": ...}` body."""

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from flant5_lib.serve.telemetry import Metrics, request_id

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_500_000  # Vertex AI rejects online prediction requests over 1.5 MB
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


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
    response = error_response(status, message, headers)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})



def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error the server sends: `{"error": "..."}`, one line, without local paths or bucket names."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)
