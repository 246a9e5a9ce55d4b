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

- "backend lost" is UNAVAILABLE (a direct connection), or INTERNAL (through nginx) or CANCELLED
  (through HAProxy) that carry no ``hushwire-error-code`` trailer, and never the caller's own
  cancel (:meth:`LiveStream.cancel`);
- reopening is retried with backoff within ``connect_timeout`` seconds from the loss, then the
  stream fails with a :class:`HushwireClientError` that says so (opening the first stream is
  retried the same way, so a replica that is draining is simply passed over);
- audio the lost replica took but never answered is gone (``BackendLost.frames_lost``); the
  resumed stream's output starts again with its algorithmic delay (``BackendLost.delay_samples``).

``stream(..., resume=False)`` restores fail-on-loss (``enhance()`` uses it: it restarts the whole
signal instead, so its output stays exact).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.channel import ClientTLS, open_aio_channel, open_channel
from client.errors import CallStatus, HushwireClientError, from_rpc_error, is_retryable
from hushwire.contract import pcm
from hushwire.contract.metadata import AUTHORIZATION_KEY
from hushwire.v1 import enhancer_pb2, enhancer_pb2_grpc

__all__ = ["AsyncEnhancerClient", "BackendLost", "EnhancerClient", "LiveStream", "StreamOutput", "Update"]

_RETRY_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Update:
    """A mid-stream settings change; ``None`` leaves a setting as it is."""

    attenuation_limit_db: float | None = None
    bypass: bool | None = None


@dataclass(frozen=True)
class BackendLost:
    """The server of a live stream went away mid-stream, and the stream resumed on a new one.

    It arrives on the first output after the resume (``StreamOutput.backend_lost``, with no audio).
    """

    status: grpc.StatusCode | None  # how the loss looked: UNAVAILABLE, CANCELLED (HAProxy), INTERNAL (nginx)
    message: str                    # the error's details, for logs
    attempts: int                   # streams opened to resume (1: the first try worked)
    outage_s: float                 # from the loss to the new stream's first answer
    frames_lost: int                # input frames (per channel) the lost server took without answering
    delay_samples: int              # the new stream's algorithmic delay: its output starts over with it


@dataclass(frozen=True)
class StreamOutput:
    audio: np.ndarray          # float32 (frames, channels); may have 0 frames
    voice_probability: float
    backend_lost: BackendLost | None = None  # set (with no audio) when the stream just resumed elsewhere


def _as_frames(x: np.ndarray, channels: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] != channels:
        raise ValueError(f"audio must have shape (frames, {channels}), got {x.shape}")
    return x


def _config_request(
    sample_rate: int, channels: int, encoding: int, attenuation_limit_db: float | None
) -> enhancer_pb2.StreamEnhanceRequest:
    config = enhancer_pb2.StreamConfig(sample_rate_hz=sample_rate, channels=channels, encoding=encoding)
    if attenuation_limit_db is not None:
        config.attenuation_limit_db = attenuation_limit_db
    return enhancer_pb2.StreamEnhanceRequest(config=config)


def _item_request(item: np.ndarray | Update, channels: int, encoding: int) -> enhancer_pb2.StreamEnhanceRequest:
    if isinstance(item, Update):
        up = enhancer_pb2.StreamUpdate()
        if item.attenuation_limit_db is not None:
            up.attenuation_limit_db = item.attenuation_limit_db
        if item.bypass is not None:
            up.bypass = item.bypass
        return enhancer_pb2.StreamEnhanceRequest(update=up)
    return enhancer_pb2.StreamEnhanceRequest(audio=pcm.encode(_as_frames(item, channels), encoding))


class _Retry:
    """Reconnect budget: retryable errors are retried with backoff until ``budget_s`` after the first."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.deadline: float | None = None
        self.attempt = 0

    def wait_after(self, err: HushwireClientError) -> float:
        """Seconds to wait before the next try; re-raises ``err`` when it must not be retried."""
        if not is_retryable(err):
            raise err
        now = time.monotonic()
        self.deadline = self.deadline or now + self.budget_s
        if now >= self.deadline:
            raise err
        wait = _RETRY_BACKOFF_S[min(self.attempt, len(_RETRY_BACKOFF_S) - 1)]
        self.attempt += 1
        return min(wait, self.deadline - now)


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
            grpc.StatusCode.UNAVAILABLE, None, f"the hushwire server at {target} is not serving (shutting down?)"
        )


def _metadata(key: str | None) -> tuple[tuple[str, str], ...]:
    return ((AUTHORIZATION_KEY, key),) if key else ()


_END = object()    # the caller's items are exhausted
_STALE = object()  # the call that asked is dead: its item goes to the next call


class _Source:
    """The caller's items, shared by the successive calls of one resumed stream.

    grpc reads a call's requests in its own thread, which may be blocked in ``next(items)`` when
    the call dies. The item it then gets is kept for the next call instead of being lost, and the
    lock keeps two calls from running the caller's generator at once.
    """

    def __init__(self, items: Iterable[Any]) -> None:
        self._it = iter(items)
        self._lock = threading.Lock()
        self._carry: list[Any] = []
        self._ended = False
        self.generation = 0

    def take(self, generation: int) -> Any:
        with self._lock:
            if generation != self.generation:
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
            if generation != self.generation:
                self._carry.append(item)
                return _STALE
            return item


class _Settings:
    """What a resumed stream must restore: the config and the latest mid-stream updates."""

    def __init__(self, sample_rate: int, channels: int, encoding: int, attenuation_limit_db: float | None) -> None:
        self.sample_rate, self.channels, self.encoding = sample_rate, channels, encoding
        self.attenuation_limit_db = attenuation_limit_db
        self.bypass: bool | None = None

    def opening(self) -> list[enhancer_pb2.StreamEnhanceRequest]:
        out = [_config_request(self.sample_rate, self.channels, self.encoding, self.attenuation_limit_db)]
        if self.bypass:
            out.append(_item_request(Update(bypass=True), self.channels, self.encoding))
        return out

    def request(self, item: np.ndarray | Update) -> tuple[enhancer_pb2.StreamEnhanceRequest, int]:
        """The request for ``item`` and its frames (0 for an update), noting updates."""
        if isinstance(item, Update):
            if item.attenuation_limit_db is not None:
                self.attenuation_limit_db = item.attenuation_limit_db
            if item.bypass is not None:
                self.bypass = item.bypass
            return _item_request(item, self.channels, self.encoding), 0
        x = _as_frames(item, self.channels)
        return enhancer_pb2.StreamEnhanceRequest(audio=pcm.encode(x, self.encoding)), x.shape[0]


class _Progress:
    """Frames sent and received on the current call, to count what a lost server took."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0

    def lost(self, delay: int) -> int:
        return max(0, self.sent - max(0, self.received - delay))


def _give_up(target: str, budget_s: float, lost: HushwireClientError, attempts: int,
             last: HushwireClientError) -> HushwireClientError:
    return HushwireClientError(
        last.status, last.code,
        f"lost the hushwire server at {target} mid-stream ({lost}) and could not resume the stream within "
        f"{budget_s:g} s ({attempts} attempt(s); last: {last.msg or last.status})")


class LiveStream:
    """Responses of one live stream. ``delay_samples`` is known once the stream has started (and
    changes to the new stream's after a resume); ``reconnects`` lists the :class:`BackendLost` events."""

    def __init__(self, open_call: Callable[[Iterator[enhancer_pb2.StreamEnhanceRequest]], Any], items: Iterable[Any],
                 settings: _Settings, *, resume: bool = True, target: str = "", budget_s: float = 10.0) -> None:
        self._open_call = open_call
        self._source = _Source(items)
        self._settings = settings
        self._resume = resume
        self._target = target
        self._budget_s = budget_s
        self._cancelled = False
        self._progress = _Progress()
        self.reconnects: list[BackendLost] = []
        retry = _Retry(budget_s)
        while True:  # a replica that is draining, or gone but not yet noticed by the balancer: try again
            try:
                self._connect()
                return
            except grpc.RpcError as err:
                first = from_rpc_error(err)
                if not resume:
                    raise first from None
            time.sleep(retry.wait_after(first))  # raises ``first`` when it must not be retried

    def _requests(self, generation: int, progress: _Progress) -> Iterator[enhancer_pb2.StreamEnhanceRequest]:
        yield from self._settings.opening()
        while (item := self._source.take(generation)) is not _END and item is not _STALE:
            req, frames = self._settings.request(item)
            progress.sent += frames
            yield req

    def _connect(self) -> None:
        self._source.generation += 1
        self._progress = _Progress()
        self._responses = self._open_call(self._requests(self._source.generation, self._progress))
        first = next(self._responses)
        self.delay_samples: int = first.algorithmic_delay_samples

    def _reconnect(self, lost: HushwireClientError) -> BackendLost:
        t0 = time.monotonic()
        # What the lost server took is counted once the new call exists: from then on the old
        # call's request thread hands anything it still takes to the new one (``_Source``).
        old, old_delay = self._progress, self.delay_samples
        retry = _Retry(self._budget_s)
        attempts = 0
        while True:
            attempts += 1
            try:
                self._connect()
                break
            except grpc.RpcError as err:
                last = from_rpc_error(err)
                if self._cancelled or not is_retryable(last):  # e.g. the key was revoked meanwhile
                    raise last from None
                try:
                    wait = retry.wait_after(last)
                except HushwireClientError:
                    raise _give_up(self._target, self._budget_s, lost, attempts, last) from None
                time.sleep(wait)
        event = BackendLost(lost.status, lost.msg, attempts, time.monotonic() - t0, old.lost(old_delay),
                            self.delay_samples)
        self.reconnects.append(event)
        return event

    def __iter__(self) -> Iterator[StreamOutput]:
        channels, encoding = self._settings.channels, self._settings.encoding
        while True:
            try:
                for r in self._responses:
                    audio = pcm.decode(r.audio, encoding, channels)
                    self._progress.received += audio.shape[0]
                    yield StreamOutput(audio, r.voice_probability)
                return
            except grpc.RpcError as err:
                lost = from_rpc_error(err)
                if self._cancelled or not self._resume or not is_retryable(lost):
                    raise lost from None
            event = self._reconnect(lost)
            yield StreamOutput(np.zeros((0, channels), np.float32), 0.0, backend_lost=event)

    def cancel(self) -> None:
        """End the stream from the caller's side (never resumed)."""
        self._cancelled = True
        self._responses.cancel()


async def _anext(it: AsyncIterator[Any]) -> Any:
    return await it.__anext__()


class _AsyncSource:
    """:class:`_Source` for asyncio. grpc.aio cancels a dead call's request task, perhaps while it
    waits for the caller's next item: that wait is shielded and handed to the next call, so the
    caller's async generator is neither cancelled nor skips an item."""

    def __init__(self, items: AsyncIterable[Any] | Iterable[Any]) -> None:
        self._ait = items.__aiter__() if isinstance(items, AsyncIterable) else None
        self._it = iter(items) if not isinstance(items, AsyncIterable) else None
        self._pending: asyncio.Future[Any] | None = None
        self._carry: list[Any] = []
        self._ended = False
        self.generation = 0

    async def take(self, generation: int) -> Any:
        while True:
            if generation != self.generation:
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
            if generation != self.generation:
                self._carry.append(item)
                return _STALE
            return item


class _AsyncLive:
    """One resumable live stream under asyncio (see :class:`LiveStream`)."""

    def __init__(self, open_call: Callable[[AsyncIterator[enhancer_pb2.StreamEnhanceRequest]], Any],
                 items: AsyncIterable[Any] | Iterable[Any], settings: _Settings, *, resume: bool, target: str,
                 budget_s: float) -> None:
        self._open_call = open_call
        self._source = _AsyncSource(items)
        self._settings = settings
        self._resume = resume
        self._target = target
        self._budget_s = budget_s
        self._progress = _Progress()
        self._call: Any = None
        self._status: CallStatus | None = None
        self.delay_samples = 0
        self.reconnects: list[BackendLost] = []

    async def _requests(self, generation: int, progress: _Progress,
                        ) -> AsyncIterator[enhancer_pb2.StreamEnhanceRequest]:
        for req in self._settings.opening():
            yield req
        while (item := await self._source.take(generation)) is not _END and item is not _STALE:
            req, frames = self._settings.request(item)
            progress.sent += frames
            yield req

    async def connect(self) -> None:
        self._source.generation += 1
        self._progress = _Progress()
        self._call = self._open_call(self._requests(self._source.generation, self._progress))
        # A request written as the server ends the call makes grpc.aio report a local INTERNAL in
        # place of the server's status, and INTERNAL without a trailer would look like a lost server.
        self._status = CallStatus(self._call)
        try:
            first = await self._call.read()
        except grpc.aio.AioRpcError as err:
            raise await self._status.error_for(err) from None
        if first is grpc.aio.EOF:
            raise HushwireClientError(None, None, "the server ended the stream without a response")
        self.delay_samples = first.algorithmic_delay_samples

    async def _reconnect(self, lost: HushwireClientError) -> BackendLost:
        t0 = time.monotonic()
        # What the lost server took is counted once the new call exists: from then on the old
        # call's request thread hands anything it still takes to the new one (``_Source``).
        old, old_delay = self._progress, self.delay_samples
        retry = _Retry(self._budget_s)
        attempts = 0
        while True:
            attempts += 1
            try:
                await self.connect()
                break
            except (grpc.RpcError, HushwireClientError) as err:
                last = from_rpc_error(err) if isinstance(err, grpc.RpcError) else err
                if not is_retryable(last):  # e.g. the key was revoked meanwhile
                    raise last from None
                try:
                    wait = retry.wait_after(last)
                except HushwireClientError:
                    raise _give_up(self._target, self._budget_s, lost, attempts, last) from None
                await asyncio.sleep(wait)
        event = BackendLost(lost.status, lost.msg, attempts, time.monotonic() - t0, old.lost(old_delay),
                            self.delay_samples)
        self.reconnects.append(event)
        return event

    async def outputs(self) -> AsyncIterator[StreamOutput]:
        channels, encoding = self._settings.channels, self._settings.encoding
        while True:
            try:
                while (r := await self._call.read()) is not grpc.aio.EOF:
                    audio = pcm.decode(r.audio, encoding, channels)
                    self._progress.received += audio.shape[0]
                    yield StreamOutput(audio, r.voice_probability)
                return
            except grpc.RpcError as err:
                real = err
                if isinstance(err, grpc.aio.AioRpcError) and self._status is not None:
                    real = await self._status.error_for(err)
                lost = from_rpc_error(real)
                if not self._resume or not is_retryable(lost):
                    raise lost from None
            event = await self._reconnect(lost)
            yield StreamOutput(np.zeros((0, channels), np.float32), 0.0, backend_lost=event)


class EnhancerClient:
    """Blocking client. Use as a context manager, or call :meth:`close`.

    ``tls_ca`` (a PEM file) makes it talk TLS to a server whose certificate that CA signed; add
    ``tls_cert`` and ``tls_key`` for a server that requires client certificates (mutual TLS)."""

    def __init__(
        self, target: str = "127.0.0.1:50051", key: str | None = None, *, connect_timeout: float = 10.0,
        tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
    ) -> None:
        self.target = target
        self.key = key
        self.connect_timeout = connect_timeout
        self._channel = open_channel(target, ClientTLS.of(tls_ca, tls_cert, tls_key))
        self._stub = enhancer_pb2_grpc.EnhancerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._ready = False  # checked once, and again after a retryable failure

    def __enter__(self) -> EnhancerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the server answers its health check as SERVING, up to ``connect_timeout``."""
        timeout = self.connect_timeout if timeout is None else timeout
        try:
            resp = self._health.Check(_HEALTH_REQUEST, timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as err:
            raise _unreachable(self.target, timeout, err) from None
        _check_serving(resp, self.target)

    def stream(
        self, items: Iterable[np.ndarray | Update], sample_rate: int, channels: int = 1, *,
        encoding: str = "float32", attenuation_limit_db: float | None = None, resume: bool = True,
    ) -> LiveStream:
        """Start a live stream over ``items`` (audio arrays and :class:`Update` s, consumed lazily).

        With ``resume`` (the default) a server lost mid-stream is replaced by a new stream, announced
        by :class:`BackendLost` on the next output (see the module docstring); without, it raises."""
        if not self._ready:
            self.wait_ready()
            self._ready = True
        settings = _Settings(sample_rate, channels, pcm.ENCODINGS[encoding], attenuation_limit_db)
        metadata = _metadata(self.key)
        return LiveStream(lambda requests: self._stub.StreamEnhance(requests, metadata=metadata), items, settings,
                          resume=resume, target=self.target, budget_s=self.connect_timeout)

    def enhance(
        self, audio: np.ndarray, sample_rate: int, *, chunk_ms: float = 20.0, realtime: bool = False,
        encoding: str = "float32", attenuation_limit_db: float | None = None,
    ) -> np.ndarray:
        """Denoise a whole signal through the server. Returns float32 of the input's shape, aligned."""
        x = np.asarray(audio, dtype=np.float32)
        frames = _as_frames(x, x.shape[1] if x.ndim == 2 else 1)
        chunk = max(1, int(round(sample_rate * chunk_ms / 1000.0)))
        retry = _Retry(self.connect_timeout)
        while True:
            try:
                live = self.stream(
                    _chunks(frames, chunk, sample_rate if realtime else None), sample_rate, frames.shape[1],
                    encoding=encoding, attenuation_limit_db=attenuation_limit_db, resume=False,
                )
                outs = [o.audio for o in live]
                y = _aligned(outs, live.delay_samples, frames.shape[0], frames.shape[1])
                return y if x.ndim == 2 else y[:, 0]
            except HushwireClientError as err:
                self._ready = False
                time.sleep(retry.wait_after(err))


class AsyncEnhancerClient:
    """asyncio client (grpc.aio) with the same methods as :class:`EnhancerClient`."""

    def __init__(
        self, target: str = "127.0.0.1:50051", key: str | None = None, *, connect_timeout: float = 10.0,
        tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
    ) -> None:
        self.target = target
        self.key = key
        self.connect_timeout = connect_timeout
        self._channel = open_aio_channel(target, ClientTLS.of(tls_ca, tls_cert, tls_key))
        self._stub = enhancer_pb2_grpc.EnhancerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._ready = False  # checked once, and again after a retryable failure

    async def __aenter__(self) -> AsyncEnhancerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the server answers its health check as SERVING, up to ``connect_timeout``."""
        timeout = self.connect_timeout if timeout is None else timeout
        try:
            resp = await self._health.Check(_HEALTH_REQUEST, timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as err:
            raise _unreachable(self.target, timeout, err) from None
        _check_serving(resp, self.target)

    async def stream(
        self, items: AsyncIterable[np.ndarray | Update] | Iterable[np.ndarray | Update], sample_rate: int,
        channels: int = 1, *, encoding: str = "float32", attenuation_limit_db: float | None = None,
        resume: bool = True,
    ) -> tuple[int, AsyncIterator[StreamOutput]]:
        """Start a live stream; returns ``(delay_samples, outputs)``. ``resume`` as in
        :meth:`EnhancerClient.stream` (a resumed stream's delay is in its :class:`BackendLost`)."""
        if not self._ready:
            await self.wait_ready()
            self._ready = True
        settings = _Settings(sample_rate, channels, pcm.ENCODINGS[encoding], attenuation_limit_db)
        metadata = _metadata(self.key)
        live = _AsyncLive(lambda requests: self._stub.StreamEnhance(requests, metadata=metadata), items, settings,
                          resume=resume, target=self.target, budget_s=self.connect_timeout)
        retry = _Retry(self.connect_timeout)
        while True:  # a replica that is draining, or gone but not yet noticed by the balancer: try again
            try:
                await live.connect()
                return live.delay_samples, live.outputs()
            except grpc.RpcError as err:
                first = from_rpc_error(err)
                if not resume:
                    raise first from None
            await asyncio.sleep(retry.wait_after(first))  # raises ``first`` when it must not be retried

    async def enhance(
        self, audio: np.ndarray, sample_rate: int, *, chunk_ms: float = 20.0,
        encoding: str = "float32", attenuation_limit_db: float | None = None,
    ) -> np.ndarray:
        x = np.asarray(audio, dtype=np.float32)
        frames = _as_frames(x, x.shape[1] if x.ndim == 2 else 1)
        chunk = max(1, int(round(sample_rate * chunk_ms / 1000.0)))
        retry = _Retry(self.connect_timeout)
        while True:
            try:
                delay, outputs = await self.stream(
                    _chunks(frames, chunk, None), sample_rate, frames.shape[1],
                    encoding=encoding, attenuation_limit_db=attenuation_limit_db, resume=False,
                )
                outs = [o.audio async for o in outputs]
                y = _aligned(outs, delay, frames.shape[0], frames.shape[1])
                return y if x.ndim == 2 else y[:, 0]
            except HushwireClientError as err:
                self._ready = False
                await asyncio.sleep(retry.wait_after(err))
