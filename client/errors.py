"""The client's one exception: a gRPC error with hushwire's contract code when the server gave one."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

import grpc

from hushwire.contract.errors import RETRYABLE
from hushwire.contract.metadata import ERROR_CODE_KEY, error_code

__all__ = ["ERROR_CODE_KEY", "RETRYABLE_CODES", "CallStatus", "HushwireClientError", "from_rpc_error",
           "is_retryable"]

# After grpc's local INTERNAL for a failed write, how long to wait for the server's own status.
STATUS_WAIT_S = 2.0
_LOCAL_INTERNAL_DETAILS = "Internal error from Core"   # grpc.aio's details for it (cygrpc set_internal_error)
_T = TypeVar("_T")


class HushwireClientError(Exception):
    """``code`` is the contract code (e.g. ``API_KEY_NOT_FOUND``), or None when no hushwire server sent it."""

    def __init__(self, status: grpc.StatusCode | None, code: str | None, msg: str) -> None:
        self.status = status
        self.code = code
        self.msg = msg
        label = code or (status.name if status else "ERROR")
        super().__init__(f"{label}: {msg}")


def _trailer_code(err: grpc.RpcError) -> str | None:
    try:
        trailers = err.trailing_metadata()
    except Exception:  # an error raised before any call was made has no trailers
        return None
    return error_code(trailers)


def from_rpc_error(err: grpc.RpcError) -> HushwireClientError:
    status = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    return HushwireClientError(status, _trailer_code(err), details or "")


# Contract codes that mean "try again, perhaps elsewhere" (draining, or full).
RETRYABLE_CODES = RETRYABLE


def is_retryable(err: HushwireClientError) -> bool:
    """Try again on a retryable contract code; with no code (no hushwire server said it), on
    UNAVAILABLE, and on INTERNAL/CANCELLED (a proxy lost its backend). The caller's own cancel and a
    caller that stopped reading are decided before this (``client.core.StreamCore``)."""
    if err.code is not None:
        return err.code in RETRYABLE_CODES
    return err.status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED)


def _settled(coro: Coroutine[Any, Any, _T]) -> _T | None:
    """The value of a coroutine that finishes without suspending, else None (and it is closed).

    A done call's ``code()``, ``details()`` and ``trailing_metadata()`` read the status grpc holds and
    return at once; this reads them inside a (synchronous) done callback."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return cast(_T, stop.value)
    coro.close()
    return None


def _local_error(err: grpc.aio.AioRpcError) -> bool:
    """grpc's own INTERNAL for a failed write, which carries no word from the server."""
    return (err.code() == grpc.StatusCode.INTERNAL and err.details() == _LOCAL_INTERNAL_DETAILS
            and not err.trailing_metadata())


class CallStatus:
    """The server's final status of a streaming grpc.aio call, kept from being overwritten.

    When the server ends a stream (a refused update, say) while a write of the next request is
    already in grpc core, the write fails and grpc.aio replaces the call's status with a local
    INTERNAL "Internal error from Core" without trailers (``_write`` → ``set_internal_error``). The
    server's status usually arrived just before and is lost: the caller would see INTERNAL (which
    looks retryable) instead of the server's code. A done callback runs when the first status is
    set, so it copies the server's status while it is still there.

    When the local INTERNAL is set first (a few races in a hundred), grpc core still holds the
    server's status, but delivers it only once the responses queued before it have been read, and
    ``read()`` refuses to read from a call that grpc already considers done. :meth:`error_for` then
    reads and drops those responses with grpc.aio's private ``_read`` (the method ``read()`` and
    ``async for`` use underneath; without it nothing is drained and the local error stays), after
    which the server's status replaces the local one; all of it within :data:`STATUS_WAIT_S`.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._first: grpc.aio.AioRpcError | None = None
        call.add_done_callback(self._record)

    def _record(self, call: Any) -> None:
        code = _settled(call.code())
        if self._first is not None or code is None or code == grpc.StatusCode.OK:
            return
        trailers = _settled(call.trailing_metadata())
        self._first = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers or grpc.aio.Metadata(),
                                           _settled(call.details()))

    async def error_for(self, err: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        """The error to report for ``err``: the server's own when ``err`` is grpc's local one."""
        if not _local_error(err):
            return err
        if self._first is not None and not _local_error(self._first):
            return self._first
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STATUS_WAIT_S
        await self._drain(deadline)
        while True:
            code, details = await self._call.code(), await self._call.details()
            if code != grpc.StatusCode.INTERNAL or details != _LOCAL_INTERNAL_DETAILS:
                return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), await self._call.trailing_metadata(), details)
            if loop.time() >= deadline:
                return err
            await asyncio.sleep(0.02)

    async def _drain(self, deadline: float) -> None:
        """Read and drop the responses still queued in grpc core (see the class docstring)."""
        read = getattr(self._call, "_read", None)
        if read is None:
            return
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            try:
                message = await asyncio.wait_for(read(), deadline - loop.time())
            except Exception:  # noqa: BLE001 - nothing more to read, whatever the reason
                return
            if message is grpc.aio.EOF:
                return
