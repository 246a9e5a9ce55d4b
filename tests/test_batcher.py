"""StreamBatcher: the collection window, its early end, and one batch for the chunks in it."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from hushwire.contract import pcm
from server.streams import StreamBatcher, StreamSession


def _chunk(seed: int) -> bytes:
    x = (np.random.default_rng(seed).standard_normal((320, 1)) * 0.05).astype(np.float32)
    return pcm.encode(x, pcm.PCM16)


async def _submit(batcher: StreamBatcher, sessions: list[StreamSession]) -> float:
    t0 = time.monotonic()
    await asyncio.gather(*(batcher.process(s, _chunk(i)) for i, s in enumerate(sessions)))
    return time.monotonic() - t0


def test_window_ends_early_when_every_open_stream_has_a_chunk() -> None:
    batcher = StreamBatcher(window_s=2.0, min_streams=4)
    sessions = [StreamSession(16000, 1, pcm.PCM16, batcher=batcher) for _ in range(4)]
    took = asyncio.run(_submit(batcher, sessions))
    assert took < 1.0  # did not sit out the 2 s window
    assert (batcher.batches, batcher.chunks) == (1, 4)


def test_window_waits_for_streams_that_have_not_sent_yet() -> None:
    batcher = StreamBatcher(window_s=0.3, min_streams=4)
    sessions = [StreamSession(16000, 1, pcm.PCM16, batcher=batcher) for _ in range(5)]
    took = asyncio.run(_submit(batcher, sessions[:4]))  # the fifth stream is open but silent
    assert 0.25 < took < 2.0
    assert (batcher.batches, batcher.chunks) == (1, 4)
    for s in sessions:
        s.close()
    assert batcher.streams == 0


def test_no_window_below_min_streams() -> None:
    batcher = StreamBatcher(window_s=2.0, min_streams=4)
    sessions = [StreamSession(16000, 1, pcm.PCM16, batcher=batcher) for _ in range(3)]
    assert asyncio.run(_submit(sessions=sessions[:1], batcher=batcher)) < 1.0
