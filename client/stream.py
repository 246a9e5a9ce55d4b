"""Typed clients for the live stream: :class:`EnhancerClient` (sync) and :class:`AsyncEnhancerClient`.

Both speak the contract in ``protos/hushwire/v1/enhancer.proto``: config first, then audio
chunks of any length, then a half-close that flushes the tail. ``enhance()`` streams a whole
array and returns it aligned (the algorithmic delay removed, same length as the input); it
reconnects and starts over on UNAVAILABLE (DESIGN.md), within the connect-timeout budget.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.errors import CallStatus, HushwireClientError, from_rpc_error, is_retryable
from hushwire.v1 import enhancer_pb2, enhancer_pb2_grpc
from server import pcm

__all__ = ["AsyncEnhancerClient", "EnhancerClient", "LiveStream", "StreamOutput", "Update"]

ENCODINGS = {"pcm16": pcm.PCM16, "float32": pcm.FLOAT32}
_RETRY_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Update:
    """A mid-stream settings change; ``None`` leaves a setting as it is."""

    attenuation_limit_db: float | None = None
    bypass: bool | None = None


@dataclass(frozen=True)
class StreamOutput:
    audio: np.ndarray          # float32 (frames, channels); may have 0 frames
    voice_probability: float


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
    return (("authorization", key),) if key else ()


class LiveStream:
    """Responses of one live stream. ``delay_samples`` is known once the stream has started."""

    def __init__(self, responses: Any, channels: int, encoding: int) -> None:
        self._responses = responses
        self._channels = channels
        self._encoding = encoding
        try:
            first = next(responses)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        self.delay_samples: int = first.algorithmic_delay_samples

    def __iter__(self) -> Iterator[StreamOutput]:
        try:
            for r in self._responses:
                yield StreamOutput(pcm.decode(r.audio, self._encoding, self._channels), r.voice_probability)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def cancel(self) -> None:
        self._responses.cancel()


class EnhancerClient:
    """Blocking client. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self, target: str = "127.0.0.1:50051", key: str | None = None, *, connect_timeout: float = 10.0,
    ) -> None:
        self.target = target
        self.key = key
        self.connect_timeout = connect_timeout
        self._channel = grpc.insecure_channel(target)
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
        encoding: str = "float32", attenuation_limit_db: float | None = None,
    ) -> LiveStream:
        """Start a live stream over ``items`` (audio arrays and :class:`Update` s, consumed lazily)."""
        if not self._ready:
            self.wait_ready()
            self._ready = True
        enc = ENCODINGS[encoding]
        requests = itertools.chain(
            [_config_request(sample_rate, channels, enc, attenuation_limit_db)],
            (_item_request(item, channels, enc) for item in items),
        )
        responses = self._stub.StreamEnhance(requests, metadata=_metadata(self.key))
        return LiveStream(responses, channels, enc)

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
                    encoding=encoding, attenuation_limit_db=attenuation_limit_db,
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
    ) -> None:
        self.target = target
        self.key = key
        self.connect_timeout = connect_timeout
        self._channel = grpc.aio.insecure_channel(target)
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
    ) -> tuple[int, AsyncIterator[StreamOutput]]:
        """Start a live stream; returns ``(delay_samples, outputs)``."""
        if not self._ready:
            await self.wait_ready()
            self._ready = True
        enc = ENCODINGS[encoding]

        async def requests() -> AsyncIterator[enhancer_pb2.StreamEnhanceRequest]:
            yield _config_request(sample_rate, channels, enc, attenuation_limit_db)
            if isinstance(items, AsyncIterable):
                async for item in items:
                    yield _item_request(item, channels, enc)
            else:
                for item in items:
                    yield _item_request(item, channels, enc)

        call = self._stub.StreamEnhance(requests(), metadata=_metadata(self.key))
        # A request written as the server ends the call makes grpc.aio report a local INTERNAL in
        # place of the server's status (and INTERNAL without a trailer would look retryable).
        status = CallStatus(call)
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(await status.error_for(err)) from None
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        if first is grpc.aio.EOF:
            raise HushwireClientError(None, None, "the server ended the stream without a response")

        async def outputs() -> AsyncIterator[StreamOutput]:
            try:
                while (r := await call.read()) is not grpc.aio.EOF:
                    yield StreamOutput(pcm.decode(r.audio, enc, channels), r.voice_probability)
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(await status.error_for(err)) from None
            except grpc.RpcError as err:
                raise from_rpc_error(err) from None

        return first.algorithmic_delay_samples, outputs()

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
                    encoding=encoding, attenuation_limit_db=attenuation_limit_db,
                )
                outs = [o.audio async for o in outputs]
                y = _aligned(outs, delay, frames.shape[0], frames.shape[1])
                return y if x.ndim == 2 else y[:, 0]
            except HushwireClientError as err:
                self._ready = False
                await asyncio.sleep(retry.wait_after(err))
