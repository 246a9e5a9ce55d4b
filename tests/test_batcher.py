"""StreamBatcher: the collection window, its early end, and one batch for the chunks in it."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from hushwire.contract import pcm
from server.metrics import METRICS
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


def test_a_batch_of_mixed_encodings_and_channels_gives_each_stream_its_own_output() -> None:
    """The batch decodes and encodes once per encoding (server/streams.py); each stream still gets exactly
    what it gets on its own: its encoding, its channels, its denoising."""
    specs = [(pcm.PCM16, 1), (pcm.FLOAT32, 2), (pcm.PCM16, 3), (pcm.FLOAT32, 1), (pcm.PCM16, 1)]
    rng = np.random.default_rng(3)
    chunks = [pcm.encode((rng.standard_normal((480, ch)) * 0.1).astype(np.float32), enc) for enc, ch in specs]
    batcher = StreamBatcher(window_s=2.0, min_streams=4)
    sessions = [StreamSession(16000, ch, enc, batcher=batcher) for enc, ch in specs]
    alone = [StreamSession(16000, ch, enc) for enc, ch in specs]
    chunks_before = METRICS.chunk_seconds.collect()[0].samples

    async def run() -> list[tuple[bytes, float, float]]:
        return list(await asyncio.gather(*(batcher.process(s, c) for s, c in zip(sessions, chunks, strict=True))))

    outs = asyncio.run(run())
    assert (batcher.batches, batcher.chunks) == (1, len(specs))
    for (got, vp, _), solo, chunk, (enc, ch) in zip(outs, alone, chunks, specs, strict=True):
        want, want_vp = solo.process(chunk)
        assert len(got) == len(want) > 0
        y, x = pcm.decode(got, enc, ch), pcm.decode(want, enc, ch)
        np.testing.assert_allclose(y, x, atol=1e-6 if enc == pcm.FLOAT32 else 1.01 / 32768)
        assert vp == pytest.approx(want_vp, abs=1e-5)
    for s in sessions:
        assert s.frames_in == 480 and s.frames_out == len(outs[0][0]) // 2   # counted as chunk by chunk
    count = {x.name: x.value for x in METRICS.chunk_seconds.collect()[0].samples}
    before = {x.name: x.value for x in chunks_before}
    assert count["hushwire_chunk_processing_seconds_count"] - before["hushwire_chunk_processing_seconds_count"] \
        == len(specs)   # one observation per chunk, made once per batch
