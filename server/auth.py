"""API-key check for every RPC, streaming ones included, in one server interceptor.

The key comes in metadata ``authorization`` as the raw key or ``Bearer <key>``. Health checking
and reflection are open. The caller's :class:`~server.store.Principal` reaches the servicer
through :func:`current_principal` (a context variable set in the same task as the handler).
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from hushwire.contract.metadata import AUTHORIZATION_KEY, RESULT_TOKEN_KEY
from server.connections import TOKEN_CALLER, Connections
from server.errors import ERRORS, MAX_KEY_CHARS, trailing_metadata
from server.metrics import METRICS
from server.rpc import DATABASE_DOWN_MSG
from server.store import AsyncStore, Principal, StoreUnavailable

__all__ = ["OPEN_SERVICES", "AuthInterceptor", "current_principal", "key_from_metadata",
           "maybe_principal"]

OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

# DownloadResult also accepts a signed result token instead of a key; the servicer checks it.
TOKEN_METHODS = ("/hushwire.v1.Jobs/DownloadResult",)


def _by_token(details: grpc.HandlerCallDetails) -> bool:
    """A call of a method that takes a result token, which it carries (checked by the servicer)."""
    return details.method in TOKEN_METHODS and any(k == RESULT_TOKEN_KEY for k, _ in details.invocation_metadata or ())

log = logging.getLogger("hushwire.auth")

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def current_principal() -> Principal:
    """The authenticated caller of the RPC being served (only valid inside a handler)."""
    p = _principal.get()
    if p is None:  # the interceptor always sets it for a non-open RPC
        raise RuntimeError("no authenticated principal in this context")
    return p


def maybe_principal() -> Principal | None:
    """The caller, or None on a token-authorised call (DownloadResult with a result token)."""
    return _principal.get()


def key_from_metadata(metadata: Any) -> str | None:
    for k, v in metadata or ():
        if k == AUTHORIZATION_KEY:
            v = v.decode() if isinstance(v, bytes) else v
            v = v.strip()
            if v[:7].lower() == "bearer ":
                v = v[7:].strip()
            if len(v) > MAX_KEY_CHARS:   # not a key: refused without hashing it
                return None
            return v or None
    return None


def _refusal(handler: grpc.RpcMethodHandler, code: str, msg: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that ends the call with the error ``code``."""
    spec = ERRORS[code]

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        METRICS.errors.labels(code).inc()
        await context.abort(spec.grpc_status, msg, trailing_metadata=trailing_metadata(code))

    return _same_kind(handler, refuse)


def _same_kind(handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]) -> grpc.RpcMethodHandler:
    if handler.request_streaming and handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    return make(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _with_principal(handler: grpc.RpcMethodHandler, principal: Principal | None) -> grpc.RpcMethodHandler:
    """Wrap the handler's behaviour so it runs with ``principal`` set in its own task (None: a call
    authorised by a result token). Errors are the servicer's to map (:func:`server.rpc.rpc_errors`)."""
    behavior = (
        handler.stream_stream or handler.stream_unary or handler.unary_stream or handler.unary_unary
    )
    if inspect.isasyncgenfunction(behavior):

        async def gen(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _principal.set(principal)
            async for item in behavior(request, context):
                yield item

        return _same_kind(handler, gen)

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _principal.set(principal)
        return await behavior(request, context)

    return _same_kind(handler, call)


def _counted(handler: grpc.RpcMethodHandler, connections: Connections, uid: int | None) -> grpc.RpcMethodHandler:
    """Wrap the handler's behaviour so ``connections`` knows the calls in flight on each connection, and
    whose they are (``uid`` None: an open service's call or a refusal; ``TOKEN_CALLER``: one authorised
    by a result token)."""
    behavior = (
        handler.stream_stream or handler.stream_unary or handler.unary_stream or handler.unary_unary
    )
    if inspect.isasyncgenfunction(behavior):

        async def gen(request: Any, context: grpc.aio.ServicerContext) -> Any:
            peer = context.peer()
            connections.opened(peer, uid)
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                connections.closed(peer, uid)

        return _same_kind(handler, gen)

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        peer = context.peer()
        connections.opened(peer, uid)
        try:
            return await behavior(request, context)
        finally:
            connections.closed(peer, uid)

    return _same_kind(handler, call)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid key (UNAUTHENTICATED) and, while starting or draining, new calls
    (UNAVAILABLE). The key lookup is awaited (:class:`~server.store.AsyncStore`): a slow database
    delays the calls that need it, never the event loop."""

    def __init__(self, store: AsyncStore, is_draining: Callable[[], bool] = lambda: False,
                 connections: Connections | None = None) -> None:
        self._store = store
        self._is_draining = is_draining
        self._connections = connections

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler, principal = await self._handler(continuation, handler_call_details)
        if handler is not None and self._connections is not None:
            caller = principal.uid if principal is not None else None
            if caller is None and _by_token(handler_call_details):
                caller = TOKEN_CALLER   # somebody's download, not an open service's call
            handler = _counted(handler, self._connections, caller)
        return handler

    async def _handler(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> tuple[grpc.RpcMethodHandler, Principal | None]:
        """The handler to run (the servicer's, or a refusal) and the caller it runs for."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler, None
        if self._is_draining():
            return _refusal(handler, "SERVICE_UNAVAILABLE", "server not serving (starting up or shutting down)"), None
        metadata = handler_call_details.invocation_metadata
        key = key_from_metadata(metadata)
        try:
            principal = await self._store.authenticate(key) if key else None
        except StoreUnavailable as exc:  # down, or no answer within the store timeout
            log.warning("%s", exc)
            return _refusal(handler, "SERVICE_UNAVAILABLE", DATABASE_DOWN_MSG), None
        if principal is None and _by_token(handler_call_details):
            return _with_principal(handler, None), None  # the servicer checks the token
        if principal is None:
            return _refusal(handler, "API_KEY_NOT_FOUND", ERRORS["API_KEY_NOT_FOUND"].default_msg), None
        return _with_principal(handler, principal), principal
