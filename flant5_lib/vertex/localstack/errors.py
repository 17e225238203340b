"""The stand-in's answers in Google's error format: one module, so the HTTP layer, the refusals and the work behind
them all raise the same error without importing one another."""

from __future__ import annotations

from typing import Any

# google.rpc.Code numbers of the statuses the stand-in answers with (an operation's or a job's `error.code`)
_RPC_CODES = {"CANCELLED": 1, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5, "ALREADY_EXISTS": 6,
              "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "INTERNAL": 13,
              "UNAVAILABLE": 14}


class ApiError(Exception):
    """An answer in Google's JSON error format; the SDK turns it into its own exception class."""

    _STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION",
               500: "INTERNAL", 504: "DEADLINE_EXCEEDED"}

    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.status = status or self._STATUS.get(code, "UNKNOWN")

    def body(self) -> dict[str, Any]:
        """The HTTP answer's body."""
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}

    def rpc_status(self) -> dict[str, Any]:
        """The `error` of a failed operation or job (a google.rpc.Status: gRPC code, not HTTP)."""
        return {"code": _RPC_CODES.get(self.status, 2), "message": self.message}
