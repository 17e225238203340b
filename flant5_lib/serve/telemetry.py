"""The server's logs and metrics: JSON lines with `severity` for Cloud Logging, each carrying the request id, and
Prometheus metrics in a registry per app."""

import contextvars
import datetime
import json
import logging
import sys
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

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

