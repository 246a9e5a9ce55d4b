"""Domain errors and the one table that maps them to gRPC and HTTP.

Tree::

    HushwireError              base; carries a contract ``code`` string and a ``msg``
    ├── (code) API_KEY_NOT_FOUND   401 / UNAUTHENTICATED
    ├── (code) INVALID_FILE        400 / INVALID_ARGUMENT
    ├── (code) INVALID_REQUEST     400 / INVALID_ARGUMENT
    ├── (code) INVALID_ARGUMENT    400 / INVALID_ARGUMENT   (a bad stream request)
    ├── (code) FILE_TOO_LARGE      413 / RESOURCE_EXHAUSTED
    ├── (code) RATE_LIMITED        429 / RESOURCE_EXHAUSTED
    ├── (code) JOB_NOT_FOUND       404 / NOT_FOUND
    ├── (code) RESULT_URL_EXPIRED  410 / FAILED_PRECONDITION
    ├── (code) SLOW_CONSUMER       –   / RESOURCE_EXHAUSTED
    ├── (code) REQUEST_TIMEOUT     408 / DEADLINE_EXCEEDED
    ├── (code) OVERLOADED          503 / UNAVAILABLE   (with Retry-After; /live closes with 1013)
    ├── (code) IDEMPOTENCY_CONFLICT 409 / ALREADY_EXISTS
    ├── (code) SERVICE_UNAVAILABLE 503 / UNAVAILABLE
    └── (code) INTERNAL            500 / INTERNAL

One exception class with a code keeps the table the single source of truth: the server puts
the code in the trailing metadata key ``hushwire-error-code`` and the gateway maps it back with
:data:`ERRORS` without guessing from the gRPC status.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

__all__ = ["ERRORS", "ERROR_CODE_KEY", "MAX_KEY_CHARS", "MAX_QUOTED_CHARS", "ErrorSpec", "HushwireError", "abort_with",
           "quote_input", "trailing_metadata"]

ERROR_CODE_KEY = "hushwire-error-code"
# Client input quoted in an error message is cut to this many characters: messages travel in gRPC
# metadata (8 KiB for all of it by default) and logs, and must never carry a hostile value whole.
MAX_QUOTED_CHARS = 64
# An API key is 32 characters; an ``Authorization`` value longer than this is refused unread
# (API_KEY_NOT_FOUND) by the gateway and the server alike, so it never reaches gRPC metadata limits.
MAX_KEY_CHARS = 1024


@dataclass(frozen=True)
class ErrorSpec:
    http_status: int
    grpc_status: grpc.StatusCode
    default_msg: str


ERRORS: dict[str, ErrorSpec] = {
    "API_KEY_NOT_FOUND": ErrorSpec(401, grpc.StatusCode.UNAUTHENTICATED, "Unregistered API Key"),
    "INVALID_FILE": ErrorSpec(400, grpc.StatusCode.INVALID_ARGUMENT, "Invalid file type from input"),
    "INVALID_REQUEST": ErrorSpec(400, grpc.StatusCode.INVALID_ARGUMENT, "Invalid request"),
    "INVALID_ARGUMENT": ErrorSpec(400, grpc.StatusCode.INVALID_ARGUMENT, "Invalid argument"),
    "FILE_TOO_LARGE": ErrorSpec(413, grpc.StatusCode.RESOURCE_EXHAUSTED, "File too large"),
    "RATE_LIMITED": ErrorSpec(429, grpc.StatusCode.RESOURCE_EXHAUSTED, "Rate limit exceeded"),
    "JOB_NOT_FOUND": ErrorSpec(404, grpc.StatusCode.NOT_FOUND, "Job not found"),
    "RESULT_URL_EXPIRED": ErrorSpec(410, grpc.StatusCode.FAILED_PRECONDITION, "Result URL expired"),
    "SLOW_CONSUMER": ErrorSpec(429, grpc.StatusCode.RESOURCE_EXHAUSTED, "Client stopped reading"),
    "REQUEST_TIMEOUT": ErrorSpec(408, grpc.StatusCode.DEADLINE_EXCEEDED, "Request timed out"),
    "OVERLOADED": ErrorSpec(503, grpc.StatusCode.UNAVAILABLE, "Server overloaded; retry, ideally elsewhere"),
    "IDEMPOTENCY_CONFLICT": ErrorSpec(409, grpc.StatusCode.ALREADY_EXISTS,
                                      "This Idempotency-Key was used with a different request, or its first "
                                      "request is still running"),
    "SERVICE_UNAVAILABLE": ErrorSpec(503, grpc.StatusCode.UNAVAILABLE, "Service unavailable"),
    "INTERNAL": ErrorSpec(500, grpc.StatusCode.INTERNAL, "Internal error"),
}


class HushwireError(Exception):
    """A refusal with a contract code (a key of :data:`ERRORS`) and a human message."""

    def __init__(self, code: str, msg: str | None = None) -> None:
        if code not in ERRORS:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.msg = msg or ERRORS[code].default_msg
        super().__init__(f"{code}: {self.msg}")

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return ERRORS[self.code].grpc_status

    @property
    def http_status(self) -> int:
        return ERRORS[self.code].http_status


def trailing_metadata(code: str) -> tuple[tuple[str, str], ...]:
    return ((ERROR_CODE_KEY, code),)


async def abort_with(context: grpc.aio.ServicerContext, err: HushwireError) -> None:
    """End the RPC with the error's status, message and ``hushwire-error-code`` trailer."""
    from server.metrics import METRICS  # here, so importing the table (the gateway does) stays light

    METRICS.errors.labels(err.code).inc()
    await context.abort(err.grpc_status, err.msg, trailing_metadata=trailing_metadata(err.code))


def quote_input(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """Client input for an error message: quoted like ``repr`` (control characters escaped) and cut to
    ``limit`` characters, with its full length noted when it was cut. Use it wherever a message echoes
    what a client sent (a job id, a field name, a key of a JSON message)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"
