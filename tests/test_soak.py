"""A bounded soak sized for the 2-core CI machine: 50 live streams and 20 uploads at once for ~20 s."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import create_key, start_server

from client import AsyncEnhancerClient, JobsClient
from client.jobs import STATUS_NAMES

STREAMS = 50
UPLOADS = 20
SECONDS = 20.0
RATE = 16000
CHUNK = 320  # 20 ms


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _stream(target: str, key: str, seed: int) -> int:
    x = (np.random.default_rng(seed).standard_normal((int(RATE * SECONDS), 1)) * 0.05).astype(np.float32)

    async def paced():  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        for i in range(0, x.shape[0], CHUNK):
            await asyncio.sleep(max(0.0, t0 + i / RATE - time.monotonic()))
            yield x[i : i + CHUNK]

    async with AsyncEnhancerClient(target, key) as c:
        delay, outputs = await c.stream(paced(), RATE, encoding="pcm16")
        frames = sum([o.audio.shape[0] async for o in outputs])
    assert frames == x.shape[0] + delay
    return frames


@pytest.mark.slow
def test_soak_streams_and_uploads(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    srv = start_server(tmp_path)
    src = tmp_path / "up.wav"
    sf.write(str(src), (np.random.default_rng(0).standard_normal(RATE * 5) * 0.05).astype(np.float32), RATE)
    try:
        asyncio.run(_stream(srv.target, key, 999))  # warm-up, then the baseline
        baseline = _rss_mib(srv.proc.pid)

        def upload(i: int) -> str:
            with JobsClient(srv.target, key) as c:
                return c.submit(src, file_name=f"{i}.wav").job_id

        async def streams() -> list[int]:
            return await asyncio.gather(*(_stream(srv.target, key, s) for s in range(STREAMS)))

        with concurrent.futures.ThreadPoolExecutor(UPLOADS) as pool:
            uploads = [pool.submit(upload, i) for i in range(UPLOADS)]
            frames = asyncio.run(streams())
            job_ids = [u.result(timeout=60) for u in uploads]
        assert len(frames) == STREAMS
        with JobsClient(srv.target, key) as c:
            done = [c.wait(j, timeout=120) for j in job_ids]
            listed = [j.job_id for j in c.list()]
        assert all(STATUS_NAMES[j.status] == "completed" for j in done), [j.error for j in done]
        assert sorted(listed) == sorted(set(job_ids)) and len(listed) == UPLOADS  # none lost, none doubled
        time.sleep(2.0)
        after = _rss_mib(srv.proc.pid)
        assert after < baseline * 1.25 + 20, f"server RSS {baseline:.0f} MiB -> {after:.0f} MiB after the soak"
    finally:
        assert srv.stop() == 0
