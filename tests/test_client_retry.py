"""A full server refuses new live streams with OVERLOADED, and the client library retries them.

The server is a real ``hushwire serve --max-streams 1``: the operator's cap, the simplest way to make
a real server full (docs/design.md's error table: OVERLOADED is UNAVAILABLE with the trailer
``hushwire-error-code: OVERLOADED``). One stream holds the slot; the clients under test are refused
until it ends. The server's ``hushwire_errors_total{code="OVERLOADED"}`` counts the refusals, which
shows the client really tried again (and did not just wait). Through a balancer, the retry lands on
another replica: tests/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from conftest import ServerProcess, create_key, free_port, scrape_metrics, start_server
from test_stream_resume import CHUNK, RATE, Feed, Reader

from client import AsyncEnhancerClient, EnhancerClient, HushwireClientError
from hushwire.v1 import enhancer_pb2, enhancer_pb2_grpc

REFUSALS = ("hushwire_errors_total", (("code", "OVERLOADED"),))


class Full:
    """The server under test, its metrics port and a key."""

    def __init__(self, srv: ServerProcess, metrics_port: int, key: str) -> None:
        self.srv, self.metrics_port, self.key = srv, metrics_port, key

    def refusals(self) -> float:
        return scrape_metrics(self.metrics_port).get(REFUSALS, 0.0)

    def wait_refusals(self, n: float, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while (seen := self.refusals()) < n:
            assert time.monotonic() < deadline, f"only {seen} OVERLOADED refusals, expected {n}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Full]:
    data_dir = tmp_path_factory.mktemp("full")
    port = free_port()
    srv = start_server(data_dir, "--max-streams", "1", "--metrics-port", str(port), "--workers", "0")
    yield Full(srv, port, create_key(data_dir))
    assert srv.stop() == 0, srv.log


class Holder:
    """One live stream that holds the server's only slot until :meth:`release`."""

    def __init__(self, full: Full) -> None:
        self.feed = Feed()
        self.client = EnhancerClient(full.srv.target, full.key)
        self.feed.put_chunks(2)
        self.reader = Reader(self.client.stream(self.feed, RATE))
        self.reader.wait_frames(CHUNK)

    def release(self) -> None:
        self.feed.end()
        self.reader.thread.join(20)
        assert self.reader.error is None, self.reader.error
        self.client.close()


def test_a_full_server_refuses_a_new_stream_at_once_with_overloaded(full: Full) -> None:
    holder = Holder(full)
    try:
        config = enhancer_pb2.StreamEnhanceRequest(config=enhancer_pb2.StreamConfig(sample_rate_hz=RATE, channels=1))
        with grpc.insecure_channel(full.srv.target) as ch:
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                list(enhancer_pb2_grpc.EnhancerStub(ch).StreamEnhance(
                    iter([config]), metadata=(("authorization", full.key),), timeout=10))
            took = time.monotonic() - t0
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # what standard gRPC clients retry
        assert dict(info.value.trailing_metadata() or ())["hushwire-error-code"] == "OVERLOADED"
        assert "ideally on another replica" in (info.value.details() or "")
        assert took < 2.0, took  # refused before any audio (generous: the machine is shared)
    finally:
        holder.release()


def test_a_stream_retries_overloaded_until_a_slot_frees(full: Full) -> None:
    holder = Holder(full)
    before = full.refusals()
    feed = Feed()
    feed.put_chunks(5)
    feed.end()
    box: dict[str, object] = {}

    def run() -> None:
        try:
            with EnhancerClient(full.srv.target, full.key, connect_timeout=30) as c:
                live = c.stream(feed, RATE)
                box["frames"] = sum(o.audio.shape[0] for o in live)
                box["delay"], box["reconnects"] = live.delay_samples, live.reconnects
        except BaseException as exc:  # reported below
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        full.wait_refusals(before + 3)  # it tried again and again (jittered backoff) ...
        assert t.is_alive() and not box  # ... and is still trying
    finally:
        holder.release()
    t.join(30)
    assert not t.is_alive() and "error" not in box, box.get("error")
    assert box["frames"] == feed.fed + box["delay"]  # type: ignore[operator]
    assert box["reconnects"] == []  # refusals before the stream started are not resumes


def test_an_async_stream_retries_overloaded_until_a_slot_frees(full: Full) -> None:
    holder = Holder(full)
    before = full.refusals()
    x = np.full(RATE // 2, 0.01, np.float32)

    async def run() -> np.ndarray:
        async with AsyncEnhancerClient(full.srv.target, full.key, connect_timeout=30) as c:
            return await c.enhance(x, RATE)

    async def main() -> np.ndarray:
        task = asyncio.create_task(run())
        try:
            while full.refusals() < before + 3:
                assert not task.done(), task
                await asyncio.sleep(0.05)
        finally:
            await asyncio.to_thread(holder.release)
        return await asyncio.wait_for(task, 30)

    y = asyncio.run(main())
    assert y.shape == x.shape and np.all(np.isfinite(y))


def test_overloaded_is_retried_within_the_connect_budget_then_raised(full: Full) -> None:
    holder = Holder(full)
    before = full.refusals()
    try:
        with EnhancerClient(full.srv.target, full.key, connect_timeout=1.5) as c:
            t0 = time.monotonic()
            with pytest.raises(HushwireClientError) as info:
                c.enhance(np.zeros(CHUNK, np.float32), RATE)
            took = time.monotonic() - t0
    finally:
        holder.release()
    assert info.value.code == "OVERLOADED" and info.value.status == grpc.StatusCode.UNAVAILABLE
    assert 1.5 <= took < 6, took
    # Backoff from 0.05-0.1 s doubling: at least 4 tries fit in 1.5 s, and far fewer than a busy loop.
    assert 4 <= full.refusals() - before <= 15, full.refusals() - before
