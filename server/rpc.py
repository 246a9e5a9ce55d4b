"""One error mapping for every servicer method: :func:`rpc_errors`.

A handler raises; this decorator ends the call with the contract's status and trailer (through
:func:`server.errors.abort_with`). It wraps the four kinds of handler alike: unary and
client-streaming ones (coroutines returning the response), and server-streaming and bidi ones
(coroutines that write with ``context.write``, or async generators that yield).

What maps to what::

    HushwireError             its own code
    StoreUnavailable          SERVICE_UNAVAILABLE  "the server's database is unavailable" (logged)
    BlobStoreError            SERVICE_UNAVAILABLE  "the server's blob store is unavailable" (logged)
    OSError, disk full        SERVICE_UNAVAILABLE  "the server's storage is full"
    anything else             raised unchanged (grpc ends the call with UNKNOWN and logs it)
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from server.blobs import BLOB_UNAVAILABLE_MSG, STORAGE_FULL_MSG, BlobStoreError, is_storage_full
from server.errors import HushwireError, abort_with
from server.store import StoreUnavailable

__all__ = ["DATABASE_DOWN_MSG", "as_error", "rpc_errors"]

log = logging.getLogger("hushwire.server")

DATABASE_DOWN_MSG = "the server's database is unavailable; try again later"

F = TypeVar("F", bound=Callable[..., Any])


def as_error(exc: BaseException) -> HushwireError | None:
    """The contract error a handler's exception stands for, or None (a bug: let it propagate)."""
    if isinstance(exc, HushwireError):
        return exc
    if isinstance(exc, StoreUnavailable):
        log.warning("%s", exc)
        return HushwireError("SERVICE_UNAVAILABLE", DATABASE_DOWN_MSG)
    if isinstance(exc, BlobStoreError):
        log.error("blob store: %s", exc)
        return HushwireError("SERVICE_UNAVAILABLE", BLOB_UNAVAILABLE_MSG)
    if isinstance(exc, OSError) and is_storage_full(exc):
        return HushwireError("SERVICE_UNAVAILABLE", STORAGE_FULL_MSG)
    return None


def rpc_errors(handler: F) -> F:
    """Decorate a servicer method ``(self, request_or_iterator, context)`` so that the exceptions
    :func:`as_error` knows end the call with their status and ``hushwire-error-code`` trailer."""
    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in handler(self, request, context):
                    yield item
            except Exception as exc:
                err = as_error(exc)
                if err is None:
                    raise
                await abort_with(context, err)

        return stream  # type: ignore[return-value]

    @functools.wraps(handler)
    async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except Exception as exc:
            err = as_error(exc)
            if err is None:
                raise
            await abort_with(context, err)

    return call  # type: ignore[return-value]
