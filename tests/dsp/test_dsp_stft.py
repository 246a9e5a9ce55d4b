"""The window pair, streaming STFT and rechunker."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.dsp.stft import Rechunker, StreamingStft, window_pair


@pytest.mark.parametrize(("frame_len", "hop"), [(512, 160), (1536, 480), (1411, 441), (320, 160), (80, 40)])
def test_window_product_overlap_adds_to_one(frame_len: int, hop: int) -> None:
    analysis, synthesis = window_pair(frame_len, hop)
    assert np.all(synthesis[: frame_len - 2 * hop] == 0.0)
    product = analysis * synthesis
    tail = product[-2 * hop :]
    # Overlap-add at the hop: sum of the two halves must be 1 everywhere.
    np.testing.assert_allclose(tail[:hop] + tail[hop:], 1.0, atol=1e-12)
    assert np.all(np.isfinite(synthesis))


def test_frame_shorter_than_two_hops_is_refused() -> None:
    with pytest.raises(ValueError):
        window_pair(300, 160)


def test_unit_gain_reconstructs_input_delayed_by_one_hop() -> None:
    hop, frame_len, channels = 160, 512, 3
    stft = StreamingStft(frame_len, hop, channels)
    assert stft.latency == hop
    rng = np.random.default_rng(0)
    x = rng.standard_normal((hop * 50, channels))
    y = np.zeros_like(x)
    for i in range(50):
        spec = stft.analyze(x[i * hop : (i + 1) * hop])
        stft.synthesize(spec, y[i * hop : (i + 1) * hop])
    err = y[hop:] - x[:-hop]
    # Reconstruction error more than 250 dB below the signal.
    assert 10 * np.log10(np.sum(err**2) / np.sum(x**2) + 1e-300) < -250


def test_fill_scale_corrects_the_zero_history() -> None:
    stft = StreamingStft(512, 160, 1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((160 * 400, 1))
    first = []
    for i in range(400):
        spec = stft.analyze(x[i * 160 : (i + 1) * 160])
        first.append(np.mean(np.abs(spec) ** 2) * stft.fill_scale)
    steady = np.mean(first[10:])
    # The first, partially filled frames have the steady-state level within 3 dB.
    for level in first[:4]:
        assert abs(10 * np.log10(level / steady)) < 3.0
    assert stft.fill_scale == 1.0


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=500), min_size=1, max_size=30))
def test_rechunker_yields_the_input_in_fixed_hops(sizes: list[int]) -> None:
    hop = 37
    total = sum(sizes)
    x = np.arange(total * 2, dtype=np.float64).reshape(total, 2)
    rc = Rechunker(hop, 2)
    got = []
    pos = 0
    for n in sizes:
        expected = rc.count(n)
        head = rc.take(x[pos : pos + n]).copy()
        blocks = [head[i : i + hop] for i in range(0, head.shape[0], hop)]
        assert len(blocks) == expected
        assert all(b.shape == (hop, 2) for b in blocks)
        got.extend(blocks)
        pos += n
    assert rc.pending == total % hop
    if got:
        np.testing.assert_array_equal(np.concatenate(got), x[: len(got) * hop])
    rc.reset()
    assert rc.pending == 0
