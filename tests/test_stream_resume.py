"""A live stream whose server dies resumes on a new stream, and the caller is told (client/stream.py).

These use one server on a direct connection (no balancer): SIGKILL it mid-stream, start it again on
the same port, and the stream goes on. tests/test_replicas.py does the same through HAProxy.
"""

from __future__ import annotations

import asyncio
import queue
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import ServerProcess, create_key, free_port, start_server

from client import BackendLost, EnhancerClient, HushwireClientError, StreamOutput
from client.core import SLOW_CONSUMER_SECONDS, Settings
from client.stream import AsyncEnhancerClient, Update
from hushwire.v1 import enhancer_pb2

RATE = 16000
CHUNK = 320  # 20 ms


class Feed:
    """Items for a live stream, put by the test and taken (blocking) by the client's request thread."""

    def __init__(self) -> None:
        self.q: queue.Queue[np.ndarray | Update | None] = queue.Queue()
        self.fed = 0

    def put_chunks(self, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(n):
            self.q.put((rng.standard_normal(CHUNK) * 0.05).astype(np.float32))
            self.fed += CHUNK

    def end(self) -> None:
        self.q.put(None)

    def __iter__(self) -> Iterator[np.ndarray | Update]:
        while (item := self.q.get(timeout=120)) is not None:
            yield item


class Reader:
    """Iterates a live stream in a thread, keeping every output and the error it ended with, if any."""

    def __init__(self, outputs: object) -> None:
        self.outputs: list[StreamOutput] = []
        self.error: BaseException | None = None
        self._it = outputs
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for out in self._it:  # type: ignore[attr-defined]
                self.outputs.append(out)
        except BaseException as exc:
            self.error = exc

    def frames(self) -> int:
        return sum(o.audio.shape[0] for o in self.outputs)

    def wait_frames(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.frames() < n:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"only {self.frames()} of {n} frames came back"
            time.sleep(0.02)


def _split(outputs: list[StreamOutput]) -> tuple[int, list[BackendLost], int]:
    """(frames before the first event, the events, frames after it)."""
    idx = next(i for i, o in enumerate(outputs) if o.backend_lost is not None)
    events = [o.backend_lost for o in outputs if o.backend_lost is not None]
    before = sum(o.audio.shape[0] for o in outputs[:idx])
    after = sum(o.audio.shape[0] for o in outputs[idx + 1 :])
    return before, events, after  # type: ignore[return-value]


def check_accounting(outputs: list[StreamOutput], fed: int, delay: int) -> BackendLost:
    """After the resume nothing is duplicated or skipped: what the lost server took (answered or
    not) plus what the new stream got is everything fed, and each stream answers its input + delay."""
    before, events, after = _split(outputs)
    assert len(events) == 1, events
    ev = events[0]
    assert all(o.audio.shape[0] == 0 for o in outputs if o.backend_lost is not None)
    taken_by_lost = ev.frames_lost + max(0, before - delay)
    assert after == fed - taken_by_lost + ev.delay_samples, (before, after, fed, ev)
    return ev


@pytest.mark.slow
def test_a_stream_resumes_after_its_server_is_sigkilled(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    port = str(free_port())
    srv = start_server(tmp_path, "--port", port, "--workers", "1")
    feed = Feed()
    srv2 = None
    try:
        with EnhancerClient(srv.target, key, connect_timeout=60) as c:
            feed.put_chunks(10)
            live = c.stream(feed, RATE)
            delay = live.delay_samples
            reader = Reader(live)
            reader.wait_frames(5 * CHUNK)
            srv.proc.kill()
            srv.proc.wait(10)
            feed.put_chunks(5, seed=1)  # fed while no server is up: kept for the resumed stream
            time.sleep(0.5)
            srv2 = start_server(tmp_path, "--port", port, "--workers", "1")
            feed.put_chunks(10, seed=2)
            feed.end()
            reader.thread.join(60)
            assert not reader.thread.is_alive(), "the stream hung"
            assert reader.error is None, reader.error
        ev = check_accounting(reader.outputs, feed.fed, delay)
        assert ev.status == grpc.StatusCode.UNAVAILABLE
        assert ev.attempts >= 2 and ev.outage_s > 0.3  # the server was down for a while
        assert ev.delay_samples == delay
        assert live.reconnects == [ev]
        assert "stream opened" in srv2.log
    finally:
        if srv2 is not None:
            assert srv2.stop() == 0


STATED_S = 2.0   # the server's --slow-consumer-seconds below


@pytest.mark.slow
def test_a_stream_whose_caller_stopped_reading_is_not_resumed(tmp_path: Path) -> None:
    """The server ends a stream whose client reads nothing (SLOW_CONSUMER). Whether that status gets
    through behind the unread audio or the server has to reset the stream (which looks like a lost
    server), the library must not open a new stream for a caller that stopped reading. The server here
    waits 2 s, not the default 10 s, and says so when the stream opens: the caller's pause of 9 s
    (2 s, the reset's 5 s grace, and a margin) is judged against what the server stated."""
    key = create_key(tmp_path)
    srv = start_server(tmp_path, "--workers", "0", "--slow-consumer-seconds", str(STATED_S))
    stop = threading.Event()
    sent = 0

    def flood() -> Iterator[np.ndarray]:
        nonlocal sent
        while not stop.is_set() and sent < 300:  # 1 s chunks at 48 kHz: far more than any flow window
            sent += 1
            yield np.zeros(48000, np.float32)

    try:
        with EnhancerClient(srv.target, key) as c:
            live = c.stream(flood(), 48000)
            outputs = iter(live)
            next(outputs)
            time.sleep(STATED_S + 7)  # past the server's patience and a reset's grace, short of the default's
            with pytest.raises(HushwireClientError) as info:
                for _ in outputs:
                    pass
        assert STATED_S + 7 < SLOW_CONSUMER_SECONDS
        assert info.value.code == "SLOW_CONSUMER", info.value
        assert live.reconnects == []
        assert srv.log.count("stream opened") == 1, srv.log  # no second stream was opened
        # The server stopped taking input meanwhile (its own count: since the server resets just the
        # stream, grpc's sync client goes on taking the caller's chunks into the dead call, each send
        # failing, until the caller reads again and meets the status; `sent` no longer shows it).
        frames_in = int(re.search(r"stream closed .*frames_in=(\d+)", srv.log).group(1))  # type: ignore[union-attr]
        assert frames_in < 300 * 48000 / 2, frames_in
    finally:
        stop.set()
        assert srv.stop() == 0


@pytest.mark.slow
def test_an_async_stream_resumes_after_its_server_is_sigkilled(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    port = str(free_port())
    srv = start_server(tmp_path, "--port", port, "--workers", "1")
    box: dict[str, ServerProcess] = {}

    async def run() -> tuple[list[StreamOutput], int, int]:
        fed = 0
        q: asyncio.Queue[np.ndarray | None] = asyncio.Queue()

        async def items() -> AsyncIterator[np.ndarray]:
            while (x := await q.get()) is not None:
                yield x

        def put(n: int) -> None:
            nonlocal fed
            for _ in range(n):
                q.put_nowait(np.full(CHUNK, 0.01, np.float32))
                fed += CHUNK

        outs: list[StreamOutput] = []
        async with AsyncEnhancerClient(srv.target, key, connect_timeout=60) as c:
            put(10)
            delay, outputs = await c.stream(items(), RATE)

            async def consume() -> None:
                async for o in outputs:
                    outs.append(o)

            task = asyncio.create_task(consume())
            while sum(o.audio.shape[0] for o in outs) < 5 * CHUNK:
                await asyncio.sleep(0.02)
            srv.proc.kill()
            await asyncio.to_thread(srv.proc.wait, 10)
            put(5)
            box["srv2"] = await asyncio.to_thread(start_server, tmp_path, "--port", port, "--workers", "1")
            put(10)
            q.put_nowait(None)
            await asyncio.wait_for(task, 60)
        return outs, fed, delay

    try:
        outs, fed, delay = asyncio.run(run())
        ev = check_accounting(outs, fed, delay)
        assert ev.status == grpc.StatusCode.UNAVAILABLE
    finally:
        if "srv2" in box:
            assert box["srv2"].stop() == 0


def test_resuming_gives_up_within_the_budget_with_a_clear_error(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    srv = start_server(tmp_path, "--workers", "1")
    feed = Feed()
    with EnhancerClient(srv.target, key, connect_timeout=2) as c:
        feed.put_chunks(5)
        live = c.stream(feed, RATE)
        reader = Reader(live)
        reader.wait_frames(2 * CHUNK)
        srv.proc.kill()
        srv.proc.wait(10)
        t0 = time.monotonic()
        feed.put_chunks(3)
        reader.thread.join(30)
        took = time.monotonic() - t0
    feed.end()
    assert not reader.thread.is_alive(), "the stream hung"
    err = reader.error
    assert isinstance(err, HushwireClientError), err
    assert err.status == grpc.StatusCode.UNAVAILABLE
    assert "could not resume the stream within 2 s" in err.msg and srv.target in err.msg
    assert took < 10, took
    assert not any(o.backend_lost for o in reader.outputs)


def test_the_callers_own_cancel_is_never_resumed(server: ServerProcess, api_key: str) -> None:
    feed = Feed()
    with EnhancerClient(server.target, api_key) as c:
        feed.put_chunks(5)
        live = c.stream(feed, RATE)
        reader = Reader(live)
        reader.wait_frames(2 * CHUNK)
        live.cancel()
        reader.thread.join(10)
    feed.end()
    assert not reader.thread.is_alive()
    assert isinstance(reader.error, HushwireClientError) and reader.error.status == grpc.StatusCode.CANCELLED
    assert live.reconnects == [] and not any(o.backend_lost for o in reader.outputs)


def test_non_retryable_errors_are_raised_not_resumed(server: ServerProcess, api_key: str) -> None:
    with EnhancerClient(server.target, api_key) as c:
        live = c.stream([np.zeros(CHUNK, np.float32), np.zeros(RATE * 2, np.float32)], RATE)  # 2 s chunk: refused
        with pytest.raises(HushwireClientError) as info:
            list(live)
    assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT and live.reconnects == []


def test_a_resumed_stream_restores_the_latest_settings() -> None:
    s = Settings(RATE, 1, enhancer_pb2.SAMPLE_ENCODING_FLOAT32, 12.0)
    assert [r.WhichOneof("msg") for r in s.opening()] == ["config"]
    s.request(Update(attenuation_limit_db=6.0))
    s.request(Update(bypass=True))
    config, update = s.opening()
    assert config.config.attenuation_limit_db == 6.0 and config.config.sample_rate_hz == RATE
    assert update.update.bypass is True
    s.request(Update(bypass=False))
    assert len(s.opening()) == 1


def test_an_async_callers_own_cancel_is_never_resumed(server: ServerProcess, api_key: str) -> None:
    async def run() -> tuple[BaseException | None, list[StreamOutput], list[BackendLost]]:
        outs: list[StreamOutput] = []
        q: asyncio.Queue[np.ndarray | None] = asyncio.Queue()

        async def items() -> AsyncIterator[np.ndarray]:
            while (x := await q.get()) is not None:
                yield x

        for _ in range(5):
            q.put_nowait(np.full(CHUNK, 0.01, np.float32))
        async with AsyncEnhancerClient(server.target, api_key) as c:
            _, live = await c.stream(items(), RATE)
            try:
                async for o in live:
                    outs.append(o)
                    if sum(x.audio.shape[0] for x in outs) >= 2 * CHUNK:
                        live.cancel()
            except HushwireClientError as err:
                return err, outs, live.reconnects
        return None, outs, live.reconnects

    err, outs, reconnects = asyncio.run(asyncio.wait_for(run(), 30))
    assert isinstance(err, HushwireClientError) and err.status == grpc.StatusCode.CANCELLED, err
    assert reconnects == [] and not any(o.backend_lost for o in outs)
