"""Per-user limits (DESIGN.md): concurrent streams, unfinished jobs, upload bytes per day -> RATE_LIMITED."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from conftest import create_key, start_server

from client import EnhancerClient, HushwireClientError, JobsClient


def _wav(path: Path, seconds: float = 0.5) -> Path:
    sf.write(str(path), np.zeros(int(16000 * seconds), np.float32), 16000)
    return path


def test_stream_limit_per_user(tmp_path: Path) -> None:
    key = create_key(tmp_path, "--name", "a")
    other = create_key(tmp_path, "--name", "b")
    srv = start_server(tmp_path, "--max-streams-per-user", "2")
    feeds: list[queue.Queue] = []
    threads = []
    try:
        def items(feed: queue.Queue):  # type: ignore[no-untyped-def]
            while (item := feed.get(timeout=30)) is not None:
                yield item

        def hold_open(feed: queue.Queue) -> None:
            with EnhancerClient(srv.target, key) as c:
                for _ in c.stream(items(feed), 16000):
                    pass

        for _ in range(2):
            feed: queue.Queue = queue.Queue()
            feed.put(np.zeros(160, np.float32))
            t = threading.Thread(target=hold_open, args=(feed,), daemon=True)
            t.start()
            feeds.append(feed)
            threads.append(t)
        time.sleep(1.0)
        with EnhancerClient(srv.target, key) as c, pytest.raises(HushwireClientError) as info:
            c.enhance(np.zeros(160, np.float32), 16000)
        assert info.value.code == "RATE_LIMITED" and info.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        with EnhancerClient(srv.target, other) as c:  # another user is not affected
            assert c.enhance(np.zeros(160, np.float32), 16000).shape == (160,)
        for f in feeds:
            f.put(None)
        for t in threads:
            t.join(10)
        with EnhancerClient(srv.target, key) as c:  # the slots are free again
            assert c.enhance(np.zeros(160, np.float32), 16000).shape == (160,)
    finally:
        for f in feeds:
            f.put(None)
        assert srv.stop() == 0


def test_job_limits_per_user(tmp_path: Path) -> None:
    key = create_key(tmp_path, "--name", "a")
    srv = start_server(tmp_path, "--max-queued-jobs-per-user", "2", "--max-bytes-per-day-per-user", "60000")
    try:
        with JobsClient(srv.target, key) as c:
            a = c.submit(_wav(tmp_path / "a.wav"), hold=True)   # 16 kB
            c.submit(_wav(tmp_path / "b.wav"), hold=True)       # 16 kB
            with pytest.raises(HushwireClientError) as info:
                c.submit(_wav(tmp_path / "c.wav"), hold=True)
            assert info.value.code == "RATE_LIMITED" and "unfinished jobs" in info.value.msg
            c.cancel(a.job_id)
            with pytest.raises(HushwireClientError) as info:  # 32 kB used today; 40 kB more is over 60 kB
                c.submit(_wav(tmp_path / "big.wav", 1.25), hold=True)
            assert info.value.code == "RATE_LIMITED" and "daily upload quota" in info.value.msg
            c.submit(_wav(tmp_path / "d.wav"), hold=True)  # 16 kB still fits
    finally:
        assert srv.stop() == 0
