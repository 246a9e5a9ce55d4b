"""HTTP errors of the gateway: one shape, one mapping from gRPC.

Every error reply is ``{"error": {"code": "...", "msg": "..."}}`` (docs/design.md, "Errors").

Tree::

    GatewayError                     an HTTP error reply: status, contract code, message
    ├── from a hushwire server       trailer ``hushwire-error-code`` → hushwire.contract.errors.ERRORS[code]
    ├── from anything else (no trailer), by gRPC status:
    │     UNAVAILABLE        503 SERVICE_UNAVAILABLE (with Retry-After, as every RETRYABLE code)
    │     DEADLINE_EXCEEDED  504 UPSTREAM_TIMEOUT
    │     anything else      502 UPSTREAM_ERROR
    └── raised by the gateway itself for the HTTP shape of a request:
          400/415 INVALID_REQUEST, 400 INVALID_FILE (no file), 413 FILE_TOO_LARGE, 408 REQUEST_TIMEOUT,
          404 NOT_FOUND / 405 METHOD_NOT_ALLOWED (no such route or method), 500 INTERNAL (a bug, with an id),
          503 OVERLOADED (past ``--max-connections``, gateway.app._ConnectionLimit)

:func:`from_rpc_error` is the only place that turns a gRPC failure into an HTTP status;
:func:`from_call_error` is the same for a streaming call, where a write racing the server's end of
the call can make grpc report its own INTERNAL in place of the server's status
(:class:`client.errors.CallStatus` recovers the server's).
"""

from __future__ import annotations

import logging

import grpc
from starlette.responses import JSONResponse

from client.errors import CallStatus
from gateway.metrics import METRICS
from hushwire.contract.errors import ERRORS, RETRY_AFTER_SECONDS, RETRYABLE
from hushwire.contract.metadata import error_code

__all__ = ["GatewayError", "error_response", "from_call_error", "from_rpc_error", "has_server_code"]

log = logging.getLogger("hushwire.gateway")

# Codes that exist only at the HTTP edge (no hushwire server sent them).
UPSTREAM_ERROR = "UPSTREAM_ERROR"
UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"


class GatewayError(Exception):
    """An error reply. ``status`` defaults to the contract table's HTTP status for ``code``."""

    def __init__(self, code: str, msg: str | None = None, status: int | None = None) -> None:
        spec = ERRORS.get(code)
        if status is None:
            if spec is None:
                raise ValueError(f"no HTTP status known for code {code!r}; pass one")
            status = spec.http_status
        self.code = code
        self.msg = msg or (spec.default_msg if spec else code)
        self.status = status
        super().__init__(f"{status} {code}: {self.msg}")

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.msg)


def error_response(status: int, code: str, msg: str) -> JSONResponse:
    """The error reply; a refusal for now (a RETRYABLE code: draining, unreachable, a store that does
    not answer, full) says when to try again, in ``Retry-After``."""
    METRICS.errors.labels(code).inc()
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if code in RETRYABLE else None
    return JSONResponse({"error": {"code": code, "msg": msg}}, status_code=status, headers=headers)


def has_server_code(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a hushwire server sent this error (a definite answer), rather than the transport or a proxy."""
    return error_code(exc.trailing_metadata()) is not None


def from_rpc_error(exc: grpc.aio.AioRpcError) -> GatewayError:
    """The HTTP error for a failed RPC: the server's contract code when it sent one, else by status."""
    code = error_code(exc.trailing_metadata())
    if code is not None:
        spec = ERRORS.get(code)
        if spec is not None:
            return GatewayError(code, exc.details() or spec.default_msg, spec.http_status)
        # A code newer than this gateway: keep it visible, but do not guess an HTTP status from gRPC's.
        return GatewayError(code, exc.details() or code, 502)
    status = exc.code()
    if status == grpc.StatusCode.UNAVAILABLE:
        return GatewayError("SERVICE_UNAVAILABLE", "the hushwire server cannot be reached; try again shortly")
    if status == grpc.StatusCode.DEADLINE_EXCEEDED:
        return GatewayError(UPSTREAM_TIMEOUT, "the hushwire server did not answer in time", 504)
    return GatewayError(UPSTREAM_ERROR, f"upstream error ({status.name})", 502)


async def from_call_error(exc: grpc.aio.AioRpcError, status: CallStatus | None, what: str) -> GatewayError:
    """:func:`from_rpc_error` for a streaming call (``what``: "stream", "upload"), with the server's own
    status when grpc replaced it by a local INTERNAL because a write raced the end of the call."""
    if status is not None:
        error = await status.error_for(exc)
        if error is not exc:
            log.info("a write raced the end of the %s: reporting the server's status %s, not grpc's local "
                     "INTERNAL", what, error.code().name)
            exc = error
    return from_rpc_error(exc)
