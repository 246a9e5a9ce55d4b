"""SIGTERM drains: NOT_SERVING, new calls refused, open streams finish or end with UNAVAILABLE, exit 0."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import create_key, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import EnhancerClient, HushwireClientError


def _open_stream(target: str, key: str) -> tuple[queue.Queue, threading.Thread, list]:
    """A live stream fed from a queue (None ends it), read in a thread; returns (feed, thread, result)."""
    feed: queue.Queue = queue.Queue()
    result: list = []

    def items():  # type: ignore[no-untyped-def]
        while (item := feed.get(timeout=30)) is not None:
            yield item

    def run() -> None:
        try:
            with EnhancerClient(target, key) as c:
                # resume=False: this checks how the server ends a stream, not how the client resumes it.
                result.append(sum(o.audio.shape[0] for o in c.stream(items(), 16000, resume=False)))
        except HushwireClientError as err:
            result.append(err)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return feed, t, result


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status


@pytest.mark.slow
def test_drain_lets_open_streams_finish(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    srv = start_server(tmp_path, "--drain-seconds", "10")
    feed, t, result = _open_stream(srv.target, key)
    feed.put(np.zeros(1600, np.float32))
    time.sleep(0.5)
    srv.proc.send_signal(15)
    deadline = time.monotonic() + 5
    while _health(srv.target) != health_pb2.HealthCheckResponse.NOT_SERVING:
        assert time.monotonic() < deadline, "health never went NOT_SERVING"
        time.sleep(0.05)
    with EnhancerClient(srv.target, key, connect_timeout=0.5) as c, pytest.raises(HushwireClientError) as info:
        c.enhance(np.zeros(160, np.float32), 16000)
    assert info.value.status == grpc.StatusCode.UNAVAILABLE
    feed.put(np.zeros(1600, np.float32))
    feed.put(None)
    t.join(10)
    assert result and result[0] == 3200 + 160, result  # the open stream finished normally, tail included
    assert srv.proc.wait(15) == 0


@pytest.mark.slow
def test_drain_ends_stragglers_with_unavailable(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    srv = start_server(tmp_path, "--drain-seconds", "1")
    feed, t, result = _open_stream(srv.target, key)
    feed.put(np.zeros(1600, np.float32))
    time.sleep(0.5)
    started = time.monotonic()
    srv.proc.send_signal(15)
    assert srv.proc.wait(15) == 0
    assert time.monotonic() - started < 8
    t.join(10)
    feed.put(None)
    err = result[0]
    assert isinstance(err, HushwireClientError)
    assert err.status == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.msg


@pytest.mark.slow
def test_drain_requeues_a_running_job_and_a_restart_finishes_it(tmp_path: Path) -> None:
    import soundfile as sf

    from client import JobsClient
    from client.jobs import STATUS_NAMES
    from hushwire.v1 import jobs_pb2

    key = create_key(tmp_path)
    src = tmp_path / "long.wav"
    sf.write(str(src), np.zeros((48000 * 120, 2), np.float32), 48000)
    srv = start_server(tmp_path, "--workers", "1", "--drain-seconds", "1")
    with JobsClient(srv.target, key) as c:
        job_id = c.submit(src).job_id
        deadline = time.monotonic() + 60
        while c.get(job_id).status != jobs_pb2.JOB_STATUS_PROCESSING:
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
    assert srv.stop() == 0
    assert "jobs requeued count=1 reason='server stopping'" in srv.log
    srv2 = start_server(tmp_path, "--workers", "1")
    try:
        with JobsClient(srv2.target, key) as c:
            done = c.wait(job_id, timeout=240)
            assert STATUS_NAMES[done.status] == "completed"
            assert sf.info(str(c.download(job_id, tmp_path)[1])).frames == 48000 * 120
    finally:
        assert srv2.stop() == 0
