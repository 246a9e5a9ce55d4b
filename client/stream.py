"""Typed clients for the live stream: :class:`EnhancerClient` (sync) and :class:`AsyncEnhancerClient`.

Both speak the contract in ``protos/hushwire/v1/enhancer.proto``: config first, then audio
chunks of any length, then a half-close that flushes the tail. ``enhance()`` streams a whole
array and returns it aligned (the algorithmic delay removed, same length as the input); it
reconnects and starts over on UNAVAILABLE (docs/design.md), within the connect-timeout budget.

A live stream (``stream()``) lives on one server. Behind a balancer with several replicas, that
replica may die mid-stream; the stream then *resumes*: the client opens a new stream (on whichever
replica the balancer picks), with the latest settings, and goes on feeding it the caller's items.
The new stream has fresh denoiser state. The caller is told with a :class:`BackendLost` event on
the next output (``StreamOutput.backend_lost``), never left hanging:

- "backend lost" is UNAVAILABLE (a direct connection, or a server that refuses a new stream with
  ``OVERLOADED``), or INTERNAL (through nginx) or CANCELLED (through HAProxy) that carry no
  ``hushwire-error-code`` trailer; never the caller's own cancel (``cancel()``), and never a stream
  that ended while its caller had stopped reading (``SLOW_CONSUMER``);
- reopening is retried with jittered backoff within ``connect_timeout`` seconds from the loss, then
  the stream fails with a :class:`HushwireClientError` that says so (opening the first stream is
  retried the same way, so a replica that is draining or full is simply passed over);
- audio the lost replica took but never answered is gone (``BackendLost.frames_lost``); the
  resumed stream's output starts again with its algorithmic delay (``BackendLost.delay_samples``).

``connections=N`` gives the client a pool of N connections to the target, and each stream (and each
retry or resume of one) takes the next. A server of several processes on one port (``hushwire serve
--processes``) serves each connection in one process, so one client's many streams spread over the
processes only with several connections; a retry after ``OVERLOADED`` then tries another connection.

``stream(..., resume=False)`` restores fail-on-loss (``enhance()`` uses it: it restarts the whole
signal instead, so its output stays exact).

What a stream knows and decides lives in :class:`client.core.StreamCore`, which does no I/O; the
classes here only move requests and responses and wait (:class:`LiveStream` in threads,
:class:`AsyncLiveStream` under asyncio), so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.channel import ClientTLS, open_aio_pool, open_pool
from client.core import (
    ENCODINGS,
    BackendLost,
    Call,
    Request,
    RetryBudget,
    Settings,
    StreamCore,
    StreamOutput,
    Update,
    as_frames,
)
from client.errors import CallStatus, HushwireClientError, from_rpc_error
from hushwire.contract.defaults import CONNECT_TIMEOUT_SECONDS, TARGET
from hushwire.contract.metadata import AUTHORIZATION_KEY, slow_consumer_seconds
from hushwire.v1 import enhancer_pb2_grpc

__all__ = ["AsyncEnhancerClient", "AsyncLiveStream", "BackendLost", "EnhancerClient", "LiveStream", "StreamOutput",
           "Update"]


def _chunks(audio: np.ndarray, chunk: int, realtime_rate: int | None) -> Iterator[np.ndarray]:
    t0 = time.monotonic()
    for start in range(0, audio.shape[0], chunk):
        if realtime_rate:
            wait = t0 + start / realtime_rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        yield audio[start : start + chunk]


def _aligned(outputs: list[np.ndarray], delay: int, frames: int, channels: int) -> np.ndarray:
    y = np.concatenate(outputs) if outputs else np.zeros((0, channels), np.float32)
    y = y[delay : delay + frames]
    if y.shape[0] < frames:  # a server that sent less than promised: pad rather than misalign
        y = np.concatenate([y, np.zeros((frames - y.shape[0], channels), np.float32)])
    return y


_HEALTH_REQUEST = health_pb2.HealthCheckRequest(service="hushwire.v1.Enhancer")


def _unreachable(target: str, timeout: float, err: grpc.RpcError) -> HushwireClientError:
    if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return HushwireClientError(
            grpc.StatusCode.UNAVAILABLE, None, f"cannot reach the hushwire server at {target} within {timeout:g} s"
        )
    return from_rpc_error(err)


def _check_serving(resp: health_pb2.HealthCheckResponse, target: str) -> None:
    if resp.status != health_pb2.HealthCheckResponse.SERVING:
        raise HushwireClientError(
            grpc.StatusCode.UNAVAILABLE, None,
            f"the hushwire server at {target} is not serving live streams (draining, or full)"
        )


def _metadata(key: str | None) -> tuple[tuple[str, str], ...]:
    return ((AUTHORIZATION_KEY, key),) if key else ()


def _no_response() -> HushwireClientError:
    return HushwireClientError(None, None, "the server ended the stream without a response")


_END = object()    # the caller's items are exhausted
_STALE = object()  # the call that asked is over: its item goes to the next call


class _Source:
    """The caller's items, shared by the successive calls of one resumed stream.

    grpc reads a call's requests in its own thread. That thread waits until the server has accepted
    the call (``StreamCore.takes_items``), so a call that is refused (a full or draining server)
    consumes none of the caller's items. It may be blocked in ``next(items)`` when the call dies: the
    item it then gets is kept for the next call instead of being lost, and the lock keeps two calls
    from running the caller's generator at once.
    """

    def __init__(self, items: Iterable[Any], core: StreamCore) -> None:
        self._it = iter(items)
        self._core = core
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._carry: list[Any] = []
        self._ended = False
        core.wake = self._wake

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def take(self, call: Call) -> Any:
        with self._changed:
            self._changed.wait_for(lambda: self._core.takes_items(call) is not None)
        with self._lock:
            if not self._core.takes_items(call):
                return _STALE
            if self._carry:
                return self._carry.pop(0)
            if self._ended:
                return _END
            try:
                item = next(self._it)
            except StopIteration:
                self._ended = True
                return _END
            if not self._core.takes_items(call):
                self._carry.append(item)
                return _STALE
            return item


class _Live:
    """What both adapters show the caller: the core's delay and resume events, and cancel."""

    _core: StreamCore
    _call: Any = None

    @property
    def delay_samples(self) -> int:
        """The current call's algorithmic delay: known once the stream has started, and the new
        call's after a resume."""
        return self._core.delay_samples

    @property
    def reconnects(self) -> list[BackendLost]:
        """The :class:`BackendLost` events so far."""
        return self._core.reconnects

    def cancel(self) -> None:
        """End the stream from the caller's side (never resumed); from any thread (sync) or task."""
        self._core.cancel()
        if self._call is not None:
            self._call.cancel()


class LiveStream(_Live):
    """Responses of one live stream, read in the caller's thread (grpc sends the requests from its own)."""

    def __init__(self, open_call: Callable[[Iterator[Request]], Any], items: Iterable[Any], core: StreamCore,
                 prepare: Callable[[float], None]) -> None:
        self._open_call = open_call
        self._source = _Source(items, core)
        self._core = core
        self._prepare = prepare  # the client's readiness check, before each call
        self._open(0.0)

    def _requests(self, call: Call) -> Iterator[Request]:
        yield from self._core.opening()
        while (item := self._source.take(call)) is not _END and item is not _STALE:
            yield self._core.request(call, item)

    def _connect(self) -> StreamOutput | None:
        self._prepare(self._core.health_timeout())
        call = self._core.new_call()
        self._call = self._open_call(self._requests(call))
        self._call.add_done_callback(lambda _: self._core.ended(call))
        try:
            first = next(self._call)
        except StopIteration:
            raise _no_response() from None
        return self._core.started(call, first, slow_consumer_seconds(self._call.initial_metadata()))

    def _open(self, wait_s: float) -> StreamOutput | None:
        """Open a call, as the core decides after each failure; returns the resume's note, if any."""
        while True:
            time.sleep(wait_s)
            try:
                return self._connect()
            except (grpc.RpcError, HushwireClientError) as err:
                wait_s = self._core.open_failed(err)

    def __iter__(self) -> Iterator[StreamOutput]:
        while True:
            call = self._core.call
            assert call is not None
            try:
                responses = iter(self._call)
                while True:
                    self._core.reading(call)
                    try:
                        response = next(responses)
                    except StopIteration:
                        return
                    yield self._core.output(call, response)
            except grpc.RpcError as err:
                wait_s = self._core.call_failed(call, err)
            note = self._open(wait_s)
            if note is not None:
                yield note


async def _anext(it: AsyncIterator[Any]) -> Any:
    return await it.__anext__()


class _AsyncSource:
    """:class:`_Source` for asyncio. grpc.aio cancels a dead call's request task, perhaps while it
    waits for the caller's next item: that wait is shielded and handed to the next call, so the
    caller's async generator is neither cancelled nor skips an item."""

    def __init__(self, items: AsyncIterable[Any] | Iterable[Any], core: StreamCore) -> None:
        self._ait = items.__aiter__() if isinstance(items, AsyncIterable) else None
        self._it = iter(items) if not isinstance(items, AsyncIterable) else None
        self._core = core
        self._changed = asyncio.Event()
        self._pending: asyncio.Future[Any] | None = None
        self._carry: list[Any] = []
        self._ended = False
        core.wake = self._wake

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def take(self, call: Call) -> Any:
        while True:
            while (may := self._core.takes_items(call)) is None:
                await self._changed.wait()
            if not may:
                return _STALE
            if self._carry:
                return self._carry.pop(0)
            if self._ended:
                return _END
            if self._it is not None:
                try:
                    return next(self._it)
                except StopIteration:
                    self._ended = True
                    return _END
            assert self._ait is not None
            if self._pending is None:
                self._pending = asyncio.ensure_future(_anext(self._ait))
            pending = self._pending
            try:
                item = await asyncio.shield(pending)
            except StopAsyncIteration:
                self._ended = True
                continue
            if self._pending is not pending:  # another call's request task took this item
                continue
            self._pending = None
            if not self._core.takes_items(call):
                self._carry.append(item)
                return _STALE
            return item


def _cancelling() -> bool:
    """The current task itself is being cancelled (not just a call it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class AsyncLiveStream(_Live):
    """One live stream under asyncio: an async iterator of :class:`StreamOutput`, with the same
    ``delay_samples``, ``reconnects`` and :meth:`cancel` as :class:`LiveStream`."""

    def __init__(self, open_call: Callable[[AsyncIterator[Request]], Any], items: AsyncIterable[Any] | Iterable[Any],
                 core: StreamCore, prepare: Callable[[float], Awaitable[None]]) -> None:
        self._open_call = open_call
        self._source = _AsyncSource(items, core)
        self._core = core
        self._prepare = prepare
        self._status: CallStatus | None = None
        self._outputs = self._run()

    def __aiter__(self) -> AsyncLiveStream:
        return self

    async def __anext__(self) -> StreamOutput:
        return await self._outputs.__anext__()

    async def _requests(self, call: Call) -> AsyncIterator[Request]:
        for req in self._core.opening():
            yield req
        while (item := await self._source.take(call)) is not _END and item is not _STALE:
            yield self._core.request(call, item)

    async def _read(self) -> Any:
        """The call's next response; grpc's local INTERNAL after a refused write is replaced by the
        server's own status (:class:`client.errors.CallStatus`), which may not look like a loss."""
        try:
            return await self._call.read()
        except grpc.aio.AioRpcError as err:
            assert self._status is not None
            raise await self._status.error_for(err) from None

    async def _connect(self) -> StreamOutput | None:
        await self._prepare(self._core.health_timeout())
        call = self._core.new_call()
        self._call = self._open_call(self._requests(call))
        self._status = CallStatus(self._call)
        self._call.add_done_callback(lambda _: self._core.ended(call))
        if (first := await self._read()) is grpc.aio.EOF:
            raise _no_response()
        return self._core.started(call, first, slow_consumer_seconds(await self._call.initial_metadata()))

    async def open(self, wait_s: float = 0.0) -> StreamOutput | None:
        """Open a call, as the core decides after each failure; returns the resume's note, if any."""
        while True:
            await asyncio.sleep(wait_s)
            try:
                return await self._connect()
            except (grpc.RpcError, HushwireClientError) as err:
                wait_s = self._core.open_failed(err)

    async def _run(self) -> AsyncIterator[StreamOutput]:
        while True:
            call = self._core.call
            assert call is not None
            try:
                while True:
                    self._core.reading(call)
                    if (response := await self._read()) is grpc.aio.EOF:
                        return
                    yield self._core.output(call, response)
            except grpc.RpcError as err:
                wait_s = self._core.call_failed(call, err)
            except asyncio.CancelledError:  # grpc.aio's answer to cancel(), as for the task's own cancel
                if _cancelling() or not self._core.cancelled:
                    raise
                raise self._core.cancelled_error() from None
            note = await self.open(wait_s)
            if note is not None:
                yield note


class _Client:
    """What both clients hold: the target, key and connect budget, the stubs, and how a stream's
    core and calls are made. Each subclass adds the waiting its I/O needs."""

    def __init__(self, target: str, key: str | None, connect_timeout: float, channels: Sequence[Any]) -> None:
        self.target = target
        self.key = key
        self.connect_timeout = connect_timeout
        self._channels = list(channels)
        self._stubs = [enhancer_pb2_grpc.EnhancerStub(ch) for ch in self._channels]
        self._turn = itertools.count()
        self._health = health_pb2_grpc.HealthStub(self._channels[0])
        self._ready = False  # checked before the first stream, and again after a retryable failure

    def _core(self, sample_rate: int, channels: int, encoding: str, attenuation_limit_db: float | None,
              resume: bool) -> StreamCore:
        return StreamCore(Settings(sample_rate, channels, ENCODINGS[encoding], attenuation_limit_db),
                          resume=resume, target=self.target, budget_s=self.connect_timeout)

    def _open_call(self) -> Callable[[Any], Any]:
        """Each call (a stream, or its retry or resume) on the pool's next connection: a retry after
        OVERLOADED from one server process of a group goes to another connection, maybe another process."""
        metadata = _metadata(self.key)

        def open_call(requests: Any) -> Any:
            stub = self._stubs[next(self._turn) % len(self._stubs)]
            return stub.StreamEnhance(requests, metadata=metadata)

        return open_call


def _signal(audio: np.ndarray, sample_rate: int, chunk_ms: float) -> tuple[np.ndarray, int]:
    """A whole signal for ``enhance()``: as (frames, channels), and its chunk length."""
    x = np.asarray(audio, dtype=np.float32)
    return as_frames(x, x.shape[1] if x.ndim == 2 else 1), max(1, int(round(sample_rate * chunk_ms / 1000.0)))


def _result(audio: np.ndarray, outputs: list[np.ndarray], delay: int, frames: np.ndarray) -> np.ndarray:
    """``enhance()``'s answer: the outputs aligned, in the input's shape."""
    y = _aligned(outputs, delay, frames.shape[0], frames.shape[1])
    return y if np.ndim(audio) == 2 else y[:, 0]


class EnhancerClient(_Client):
    """Blocking client. Use as a context manager, or call :meth:`close`.

    ``tls_ca`` (a PEM file) makes it talk TLS to a server whose certificate that CA signed; add
    ``tls_cert`` and ``tls_key`` for a server that requires client certificates (mutual TLS).
    ``connections``: how many connections its streams take turns on (see the module docstring)."""

    def __init__(
        self, target: str = TARGET, key: str | None = None, *, connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None, connections: int = 1,
    ) -> None:
        super().__init__(target, key, connect_timeout,
                         open_pool(target, connections, ClientTLS.of(tls_ca, tls_cert, tls_key)))

    def __enter__(self) -> EnhancerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the server answers its health check as SERVING, up to ``connect_timeout``."""
        timeout = self.connect_timeout if timeout is None else timeout
        try:
            resp = self._health.Check(_HEALTH_REQUEST, timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as err:
            raise _unreachable(self.target, timeout, err) from None
        _check_serving(resp, self.target)

    def _ensure_ready(self, timeout: float) -> None:
        if not self._ready:
            self.wait_ready(min(timeout, self.connect_timeout))
            self._ready = True

    def stream(
        self, items: Iterable[np.ndarray | Update], sample_rate: int, channels: int = 1, *,
        encoding: str = "float32", attenuation_limit_db: float | None = None, resume: bool = True,
    ) -> LiveStream:
        """Start a live stream over ``items`` (audio arrays and :class:`Update` s, consumed lazily).

        With ``resume`` (the default) a server lost mid-stream is replaced by a new stream, announced
        by :class:`BackendLost` on the next output (see the module docstring); without, it raises."""
        core = self._core(sample_rate, channels, encoding, attenuation_limit_db, resume)
        return LiveStream(self._open_call(), items, core, self._ensure_ready)

    def enhance(
        self, audio: np.ndarray, sample_rate: int, *, chunk_ms: float = 20.0, realtime: bool = False,
        encoding: str = "float32", attenuation_limit_db: float | None = None,
    ) -> np.ndarray:
        """Denoise a whole signal through the server. Returns float32 of the input's shape, aligned."""
        frames, chunk = _signal(audio, sample_rate, chunk_ms)
        retry = RetryBudget(self.connect_timeout)
        while True:
            try:
                live = self.stream(
                    _chunks(frames, chunk, sample_rate if realtime else None), sample_rate, frames.shape[1],
                    encoding=encoding, attenuation_limit_db=attenuation_limit_db, resume=False,
                )
                return _result(audio, [o.audio for o in live], live.delay_samples, frames)
            except HushwireClientError as err:
                if (wait := retry.wait_after(err)) is None:
                    raise
                self._ready = False
            time.sleep(wait)


class AsyncEnhancerClient(_Client):
    """asyncio client (grpc.aio) with the same methods as :class:`EnhancerClient`."""

    def __init__(
        self, target: str = TARGET, key: str | None = None, *, connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None, connections: int = 1,
    ) -> None:
        super().__init__(target, key, connect_timeout,
                         open_aio_pool(target, connections, ClientTLS.of(tls_ca, tls_cert, tls_key)))

    async def __aenter__(self) -> AsyncEnhancerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the server answers its health check as SERVING, up to ``connect_timeout``."""
        timeout = self.connect_timeout if timeout is None else timeout
        try:
            resp = await self._health.Check(_HEALTH_REQUEST, timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as err:
            raise _unreachable(self.target, timeout, err) from None
        _check_serving(resp, self.target)

    async def _ensure_ready(self, timeout: float) -> None:
        if not self._ready:
            await self.wait_ready(min(timeout, self.connect_timeout))
            self._ready = True

    async def stream(
        self, items: AsyncIterable[np.ndarray | Update] | Iterable[np.ndarray | Update], sample_rate: int,
        channels: int = 1, *, encoding: str = "float32", attenuation_limit_db: float | None = None,
        resume: bool = True,
    ) -> tuple[int, AsyncLiveStream]:
        """Start a live stream; returns ``(delay_samples, outputs)``, ``outputs`` an
        :class:`AsyncLiveStream`. ``resume`` as in :meth:`EnhancerClient.stream` (a resumed stream's
        delay is in its :class:`BackendLost`)."""
        core = self._core(sample_rate, channels, encoding, attenuation_limit_db, resume)
        live = AsyncLiveStream(self._open_call(), items, core, self._ensure_ready)
        await live.open()
        return live.delay_samples, live

    async def enhance(
        self, audio: np.ndarray, sample_rate: int, *, chunk_ms: float = 20.0,
        encoding: str = "float32", attenuation_limit_db: float | None = None,
    ) -> np.ndarray:
        frames, chunk = _signal(audio, sample_rate, chunk_ms)
        retry = RetryBudget(self.connect_timeout)
        while True:
            try:
                delay, outputs = await self.stream(
                    _chunks(frames, chunk, None), sample_rate, frames.shape[1],
                    encoding=encoding, attenuation_limit_db=attenuation_limit_db, resume=False,
                )
                return _result(audio, [o.audio async for o in outputs], delay, frames)
            except HushwireClientError as err:
                if (wait := retry.wait_after(err)) is None:
                    raise
                self._ready = False
            await asyncio.sleep(wait)
