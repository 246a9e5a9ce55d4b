"""StreamBatcher: the collection window, its early end, and one batch for the chunks in it; the
registry's count of live streams is what it waits for."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from hushwire.contract import pcm
from server.metrics import METRICS
from server.streams import DenoiserPools, StreamBatcher, StreamRegistry, StreamSession


def _chunk(seed: int) -> bytes:
    x = (np.random.default_rng(seed).standard_normal((320, 1)) * 0.05).astype(np.float32)
    return pcm.encode(x, pcm.PCM16)


async def _submit(batcher: StreamBatcher, sessions: list[StreamSession]) -> float:
    t0 = time.monotonic()
    await asyncio.gather(*(batcher.process(s, _chunk(i)) for i, s in enumerate(sessions)))
    return time.monotonic() - t0


async def _open(registry: StreamRegistry, pools: DenoiserPools, n: int) -> list[StreamSession]:
    """``n`` configured streams, each registered under a task of its own, as the servicer does."""
    sessions = []
    for _ in range(n):
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(asyncio.Event().wait())
        registry.add(task, uid=1)
        session = StreamSession(16000, 1, pcm.PCM16, pools=pools)
        registry.configured(task, session.weight)
        sessions.append(session)
    return sessions


def _batch(window_s: float, opened: int, sending: int) -> tuple[float, StreamBatcher, DenoiserPools]:
    """Open ``opened`` streams, have the first ``sending`` send one chunk each at once, close them all;
    returns how long the chunks took, the batcher and the pools."""
    async def main() -> tuple[float, StreamBatcher, DenoiserPools]:
        registry, pools = StreamRegistry(), DenoiserPools()
        batcher = StreamBatcher(lambda: registry.live, window_s=window_s, min_streams=4)
        sessions = await _open(registry, pools, opened)
        took = await _submit(batcher, sessions[:sending])
        for task in list(registry.tasks):
            registry.discard(task)
            task.cancel()
        for s in sessions:
            s.close()
        return took, batcher, pools
    return asyncio.run(main())


def test_window_ends_early_when_every_open_stream_has_a_chunk() -> None:
    took, batcher, _ = _batch(2.0, opened=4, sending=4)
    assert took < 1.0  # did not sit out the 2 s window
    assert (batcher.batches, batcher.chunks) == (1, 4)


def test_window_waits_for_streams_that_have_not_sent_yet() -> None:
    took, batcher, pools = _batch(0.3, opened=5, sending=4)  # the fifth stream is open but silent
    assert 0.25 < took < 2.0
    assert (batcher.batches, batcher.chunks) == (1, 4)
    assert pools.pool(16000).rows_in_use == 0


def test_no_window_below_min_streams() -> None:
    took, _, _ = _batch(2.0, opened=3, sending=1)
    assert took < 1.0


def test_registry_alone_counts_live_streams() -> None:
    """Registered but unconfigured streams are open, not live; the gauge follows the live count."""
    async def main() -> None:
        registry = StreamRegistry()
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[object]] = [loop.create_task(asyncio.Event().wait()) for _ in range(3)]
        for t in tasks:
            registry.add(t, uid=7)
        registry.configured(tasks[0], 1.0)
        registry.configured(tasks[1], 3.0)
        assert (len(registry.tasks), registry.live, registry.per_user[7]) == (3, 2, 3)
        assert METRICS.registry.get_sample_value("hushwire_streams_open") == 2
        registry.discard(tasks[1])
        registry.discard(tasks[2])
        registry.configured(tasks[2], 1.0)  # a discarded stream's late config does not count it again
        assert (len(registry.tasks), registry.live) == (1, 1)
        assert METRICS.registry.get_sample_value("hushwire_streams_open") == 1
        registry.discard(tasks[0])
        assert (len(registry.tasks), registry.live, dict(registry.per_user)) == (0, 0, {})
        assert METRICS.registry.get_sample_value("hushwire_streams_open") == 0
        for t in tasks:
            t.cancel()
    asyncio.run(main())


def test_a_batch_of_mixed_encodings_and_channels_gives_each_stream_its_own_output() -> None:
    """The batch decodes and encodes once per encoding (server/streams.py); each stream still gets exactly
    what it gets on its own: its encoding, its channels, its denoising."""
    specs = [(pcm.PCM16, 1), (pcm.FLOAT32, 2), (pcm.PCM16, 3), (pcm.FLOAT32, 1), (pcm.PCM16, 1)]
    rng = np.random.default_rng(3)
    chunks = [pcm.encode((rng.standard_normal((480, ch)) * 0.1).astype(np.float32), enc) for enc, ch in specs]
    alone = [StreamSession(16000, ch, enc) for enc, ch in specs]
    count = "hushwire_chunk_processing_seconds_count"
    before = METRICS.registry.get_sample_value(count) or 0.0

    async def main() -> tuple[list[tuple[bytes, float, float]], StreamBatcher, list[StreamSession]]:
        pools = DenoiserPools()
        batcher = StreamBatcher(lambda: len(specs), window_s=2.0, min_streams=4)
        sessions = [StreamSession(16000, ch, enc, pools=pools) for enc, ch in specs]
        outs = await asyncio.gather(*(batcher.process(s, c) for s, c in zip(sessions, chunks, strict=True)))
        return list(outs), batcher, sessions

    outs, batcher, sessions = asyncio.run(main())
    assert (batcher.batches, batcher.chunks) == (1, len(specs))
    for (got, vp, _), solo, chunk, (enc, ch), s in zip(outs, alone, chunks, specs, sessions, strict=True):
        want, want_vp = solo.process(chunk)
        assert len(got) == len(want) > 0
        np.testing.assert_allclose(pcm.decode(got, enc, ch), pcm.decode(want, enc, ch),
                                   atol=1e-6 if enc == pcm.FLOAT32 else 1.01 / 32768)
        assert vp == pytest.approx(want_vp, abs=1e-5)
        assert (s.frames_in, s.frames_out) == (solo.frames_in, solo.frames_out)   # counted as chunk by chunk
        s.close()
    # One observation per chunk in the chunk histogram, though made once per batch.
    assert (METRICS.registry.get_sample_value(count) or 0.0) - before == len(specs)
