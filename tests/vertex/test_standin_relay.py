"""How the stand-in relays a serving container's answer: 4xx -> 400 INVALID_ARGUMENT, but the server's load shedding
(429, 503) stays retryable, as Vertex's own front end answers overload with 429 RESOURCE_EXHAUSTED."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flant5_lib.vertex.localstack.backend import Backend, Deployment
from flant5_lib.vertex.localstack.errors import ApiError


class _Fixed(BaseHTTPRequestHandler):
    """A real HTTP container stand-in on 127.0.0.1 that answers the status named in the request body."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = int(body["status"])
        payload = json.dumps({"predictions": ["ok"]} if status == 200 else {"error": f"said {status}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def container() -> Iterator[Deployment]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fixed)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Deployment(server.server_address[1], None, Path("unused.log"), "/predict", "/health")  # type: ignore[arg-type]
    finally:
        server.shutdown()


@pytest.mark.parametrize(("status", "code", "grpc"), [
    (422, 400, "INVALID_ARGUMENT"), (413, 400, "INVALID_ARGUMENT"), (400, 400, "INVALID_ARGUMENT"),
    (429, 429, "RESOURCE_EXHAUSTED"), (503, 503, "UNAVAILABLE"), (500, 500, "INTERNAL"),
])
def test_container_status_is_relayed_as_vertex_would(container: Deployment, tmp_path: Path, status: int, code: int,
                                                     grpc: str) -> None:
    backend = Backend(tmp_path, "http://127.0.0.1:1", "local-project", "us-central1")
    assert backend.forward_predict(container, {"status": 200}) == {"predictions": ["ok"]}
    with pytest.raises(ApiError) as err:
        backend.forward_predict(container, {"status": status})
    assert (err.value.code, err.value.status) == (code, grpc)
    assert f"said {status}" in err.value.message
