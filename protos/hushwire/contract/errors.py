"""The error codes of the contract and the one table that maps each to gRPC and HTTP.

Tree (docs/design.md, "Errors")::

    code                   HTTP / gRPC status
    API_KEY_NOT_FOUND      401 / UNAUTHENTICATED
    INVALID_FILE           400 / INVALID_ARGUMENT
    INVALID_REQUEST        400 / INVALID_ARGUMENT     (the gateway answers 415 for a wrong content type)
    INVALID_ARGUMENT       400 / INVALID_ARGUMENT     (a bad stream request)
    FILE_TOO_LARGE         413 / RESOURCE_EXHAUSTED
    RATE_LIMITED           429 / RESOURCE_EXHAUSTED
    JOB_NOT_FOUND          404 / NOT_FOUND
    RESULT_URL_EXPIRED     410 / FAILED_PRECONDITION
    SLOW_CONSUMER          –   / RESOURCE_EXHAUSTED   (stream only; 429 if it ever reached HTTP)
    REQUEST_TIMEOUT        408 / DEADLINE_EXCEEDED
    OVERLOADED             503 / UNAVAILABLE          (with Retry-After; /live closes with 1013; why in the
                                                      trailer hushwire-refused-for: load, cap or users;
                                                      the gateway's own, past --max-connections, has none)
    IDEMPOTENCY_CONFLICT   409 / ALREADY_EXISTS
    SERVICE_UNAVAILABLE    503 / UNAVAILABLE          (with Retry-After)
    INTERNAL               500 / INTERNAL

A hushwire server puts the code in the trailing metadata key ``hushwire-error-code``
(:data:`hushwire.contract.metadata.ERROR_CODE_KEY`), so the gateway and the client map it back with
:data:`ERRORS` and never guess from the gRPC status. Raising them is the server's business
(``server.errors``).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

__all__ = ["ERRORS", "MAX_QUOTED_CHARS", "RETRYABLE", "RETRY_AFTER_SECONDS", "ErrorSpec", "quote_input"]

# Client input quoted in an error message is cut to this many characters: messages travel in gRPC
# metadata (8 KiB for all of it by default) and logs, and must never carry a hostile value whole.
MAX_QUOTED_CHARS = 64


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
# The codes that refuse a request for now rather than for what it is: the server is draining, or it
# cannot take another live stream in real time. A client tries again (with backoff; through a balancer
# the retry lands on another replica); both are UNAVAILABLE, which standard gRPC clients retry too.
RETRYABLE: frozenset[str] = frozenset({"SERVICE_UNAVAILABLE", "OVERLOADED"})
# The ``Retry-After`` (seconds) of an HTTP reply with a RETRYABLE code: a balancer takes a draining or
# full replica out of rotation within about a second (deploy/haproxy: checks every second), and a
# store that did not answer within --store-timeout gets a moment before the retry. Clients add jitter.
RETRY_AFTER_SECONDS = 1


def quote_input(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """Client input for an error message: quoted like ``repr`` (control characters escaped) and cut to
    ``limit`` characters, with its full length noted when it was cut. Use it wherever a message echoes
    what a client sent (a job id, a field name, a key of a JSON message)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"
