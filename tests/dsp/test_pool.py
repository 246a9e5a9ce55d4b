"""DenoiserPool: streams batched together give exactly what each gives on its own."""

from __future__ import annotations

import numpy as np
import pytest
from dsp_signals import speech_like, white

from server.dsp import Denoiser, DenoiserPool


def _signal(sr: int, seconds: float, channels: int, seed: int) -> np.ndarray:
    x = speech_like(sr, seconds, seed=seed) + white(sr, seconds, level_dbfs=-30.0 - seed)
    return np.stack([x * (1.0 - 0.2 * c) for c in range(channels)], axis=1).astype(np.float32)


def test_batched_streams_equal_separate_ones() -> None:
    sr = 16000
    rng = np.random.default_rng(7)
    pool = DenoiserPool(sr)
    layout = [1, 2, 1, 3, 1]  # channels per stream
    signals = [_signal(sr, 1.5, c, seed=i) for i, c in enumerate(layout)]
    pooled = [Denoiser(sr, c, pool=pool) for c in layout]
    alone = [Denoiser(sr, c) for c in layout]
    pooled[3].attenuation_limit_db = 6.0
    alone[3].attenuation_limit_db = 6.0
    pos = [0] * len(layout)
    got: list[list[np.ndarray]] = [[] for _ in layout]
    want: list[list[np.ndarray]] = [[] for _ in layout]
    for _ in range(60):
        # a random subset of streams, each with its own chunk size (whole hops, partial hops, none)
        members = [i for i in range(len(layout)) if rng.random() < 0.6 and pos[i] < signals[i].shape[0]]
        items = []
        for i in members:
            n = int(rng.choice([0, 1, 160, 320, 500, 1600]))
            chunk = signals[i][pos[i] : pos[i] + n]
            pos[i] += chunk.shape[0]
            items.append((pooled[i], chunk))
            want[i].append(alone[i].process(chunk))
        for i, y in zip(members, pool.process_many(items), strict=True):
            got[i].append(y)
    for i in range(len(layout)):
        g = np.concatenate(got[i]) if got[i] else np.zeros((0, layout[i]))
        w = np.concatenate(want[i]) if want[i] else np.zeros((0, layout[i]))
        assert g.shape == w.shape and g.shape[0] > 0
        np.testing.assert_allclose(g, w, atol=1e-6)
    assert pooled[3].voice_probability == pytest.approx(alone[3].voice_probability, abs=1e-9)


def test_closed_rows_are_reused_with_fresh_state() -> None:
    sr = 8000
    pool = DenoiserPool(sr)
    x = _signal(sr, 0.5, 1, seed=3)
    first = Denoiser(sr, 2, pool=pool)
    first.process(np.repeat(x, 2, axis=1))
    keep = Denoiser(sr, 1, pool=pool)
    first.close()
    assert pool.rows_in_use == 1
    again = Denoiser(sr, 1, pool=pool)  # takes rows the closed stream left
    np.testing.assert_allclose(again.process(x), Denoiser(sr).process(x), atol=1e-6)
    assert keep.process(x[:10]).shape == (0, 1)
    with pytest.raises(ValueError, match="closed"):
        first.process(x)


def test_settings_stay_per_stream() -> None:
    sr = 16000
    pool = DenoiserPool(sr)
    x = _signal(sr, 1.0, 1, seed=1)
    a, b = Denoiser(sr, pool=pool), Denoiser(sr, pool=pool)
    a.bypass = True
    ya, yb = pool.process_many([(a, x), (b, x)])
    d = a.latency_samples
    np.testing.assert_allclose(ya[d:, 0], x[: x.shape[0] - d, 0], atol=1e-6)  # bypass: the input, delayed
    np.testing.assert_allclose(yb, Denoiser(sr).process(x), atol=1e-6)


def test_pool_refuses_foreign_denoisers_and_rates() -> None:
    pool = DenoiserPool(16000)
    with pytest.raises(ValueError, match="another pool"):
        pool.process_many([(Denoiser(16000), np.zeros((160, 1)))])
    with pytest.raises(ValueError, match="16000 Hz"):
        Denoiser(48000, pool=pool)


def test_slots_are_the_pools_handles() -> None:
    """A slot names its rows; the pool refuses another pool's slot; closing twice frees once."""
    pool, other = DenoiserPool(16000), DenoiserPool(16000)
    a = Denoiser(16000, 2, pool=pool)
    b = Denoiser(16000, 1, pool=pool)
    assert (a.slot.rows, b.slot.rows, a.pool) == (slice(0, 2), slice(2, 3), pool)
    with pytest.raises(ValueError, match="another pool"):
        other.set_min_gain(a.slot, 1.0)
    with pytest.raises(ValueError, match="another pool"):
        other.close(a.slot)
    a.close()
    a.close()
    assert pool.rows_in_use == 1
    c = Denoiser(16000, 2, pool=pool)
    assert c.slot.rows == slice(0, 2)  # the closed rows, reused


def test_reset_keeps_settings_and_clears_the_counts() -> None:
    sr = 16000
    x = _signal(sr, 0.5, 1, seed=5)
    den = Denoiser(sr, attenuation_limit_db=0.0)
    den.process(x[:1000])
    den.reset()
    assert (den.slot.frames_in, den.slot.frames_out, den.slot.rechunker.pending) == (0, 0, 0)
    y = np.concatenate([den.process(x), den.flush()])
    d = den.latency_samples
    np.testing.assert_allclose(y[d:, 0], x[:, 0], atol=1e-6)  # still pass-through, from a fresh start


def test_no_object_reaches_into_anothers_private_members() -> None:
    """The pool and the denoiser (and the live streams' code around them) use each other's public
    interface only: no ``other._name`` outside ``self``/``cls`` in these modules."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "server"
    files = sorted((root / "dsp").glob("*.py")) + [root / "streams.py"]
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    found.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert not found, found


def test_a_closed_slot_cannot_touch_the_rows_it_gave_back() -> None:
    """After close, the rows may be another stream's: a late setting or reset through the old handle
    is refused instead of rewriting that stream's gain floor or clearing its signal state."""
    sr = 16000
    pool = DenoiserPool(sr)
    old = Denoiser(sr, 1, pool=pool)
    old.close()
    new = Denoiser(sr, 1, pool=pool, attenuation_limit_db=0.0)   # pass-through, on the rows `old` had
    assert new.slot.rows == old.slot.rows
    x = _signal(sr, 0.5, 1, seed=7)
    head = new.process(x[:4000])
    with pytest.raises(ValueError, match="closed"):
        old.attenuation_limit_db = 40.0
    with pytest.raises(ValueError, match="closed"):
        old.bypass = True
    with pytest.raises(ValueError, match="closed"):
        old.reset()
    with pytest.raises(ValueError, match="closed"):
        old.flush()
    y = np.concatenate([head, new.process(x[4000:]), new.flush()])
    d = new.latency_samples
    np.testing.assert_allclose(y[d:, 0], x[:, 0], atol=1e-6)   # still pass-through, state untouched
