"""Property-based tests (hypothesis): the PCM framing of the stream and the denoiser on random input."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hushwire.contract import pcm
from server.dsp import SUPPORTED_RATES, Denoiser
from server.errors import HushwireError
from server.streams import StreamSession

_FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(channels=st.integers(1, 8), frames=st.integers(0, 300), data=st.data())
def test_pcm_round_trip(channels: int, frames: int, data: st.DataObject) -> None:
    x = data.draw(arrays(np.float32, (frames, channels), elements=st.floats(-2, 2, width=32)))
    f = pcm.decode(pcm.encode(x, pcm.FLOAT32), pcm.FLOAT32, channels)
    np.testing.assert_array_equal(f, x)
    p = pcm.decode(pcm.encode(x, pcm.PCM16), pcm.PCM16, channels)
    assert p.shape == x.shape
    expect = np.clip(x, -1.0, 32767 / 32768)
    assert np.all(np.abs(p - expect) <= 0.5 / 32768 + 1e-7)  # rounds to the nearest step, saturates


@_SETTINGS
@given(channels=st.integers(1, 8), frames=st.integers(0, 300), data=st.data())
def test_pcm16_codec_is_the_reference_formula(channels: int, frames: int, data: st.DataObject) -> None:
    """PCM16 bit for bit as the contract's formula: out = saturate(rint(x * 32768)), in = int16 / 32768
    (the codec computes it with in-place numpy calls, for speed)."""
    x = data.draw(arrays(np.float32, (frames, channels), elements=st.floats(-4, 4, width=32)))
    want = np.clip(np.rint(x * np.float32(32768)), -32768, 32767).astype("<i2").tobytes()
    assert pcm.encode(x, pcm.PCM16) == want
    back = np.frombuffer(want, "<i2").astype(np.float32).reshape(-1, channels) / np.float32(32768)
    assert pcm.decode(want, pcm.PCM16, channels).tobytes() == back.tobytes()


@_SETTINGS
@given(encoding=st.sampled_from([pcm.PCM16, pcm.FLOAT32]),
       shapes=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 8)), min_size=1, max_size=6), data=st.data(),
       seed=st.integers(0, 2**31))
def test_batch_codec_equals_the_codec_chunk_by_chunk(encoding: int, shapes: list[tuple[int, int]],
                                                     data: st.DataObject, seed: int) -> None:
    """The live server decodes and encodes a batch of streams' chunks in one conversion each; the bytes and
    the samples are exactly those of one conversion per chunk, whatever the chunks' lengths and channels:
    any bytes in (NaN and inf floats too), any denoiser output out (past full scale too)."""
    xs = [data.draw(arrays(np.float32, shape, elements=st.floats(-4, 4, width=32))) for shape in shapes]
    assert pcm.encode_many(xs, encoding) == [pcm.encode(x, encoding) for x in xs]
    rng = np.random.default_rng(seed)
    width = pcm.BYTES_PER_SAMPLE[encoding]
    chunks = [rng.integers(0, 256, size=n * ch * width, dtype=np.uint8).tobytes() for n, ch in shapes]
    decoded = pcm.decode_many(chunks, encoding, [ch for _, ch in shapes])
    for got, chunk, (_, ch) in zip(decoded, chunks, shapes, strict=True):
        want = pcm.decode(chunk, encoding, ch)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)   # NaN where NaN: equal bit patterns from the same bytes


@_SETTINGS
@given(rate=st.sampled_from(SUPPORTED_RATES), channels=st.integers(1, 3),
       encoding=st.sampled_from([pcm.PCM16, pcm.FLOAT32]),
       lengths=st.lists(st.integers(0, 2500), min_size=1, max_size=8), seed=st.integers(0, 2**31))
def test_stream_framing(rate: int, channels: int, encoding: int, lengths: list[int], seed: int) -> None:
    """Any byte count is either whole frames (processed) or refused; the total out is in + delay."""
    session = StreamSession(rate, channels, encoding)
    rng = np.random.default_rng(seed)
    frame = pcm.BYTES_PER_SAMPLE[encoding] * channels
    frames_in = bytes_out = 0
    for n in lengths:
        chunk = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        try:
            out, vp = session.process(chunk)
        except HushwireError as err:
            assert err.code == "INVALID_ARGUMENT" and n % frame
            continue
        assert n % frame == 0 and len(out) % frame == 0 and 0.0 <= vp <= 1.0
        frames_in += n // frame
        bytes_out += len(out)
    bytes_out += len(session.flush())
    assert bytes_out // frame == frames_in + session.delay_samples


@_SETTINGS
@given(rate=st.sampled_from(SUPPORTED_RATES), channels=st.integers(1, 4), data=st.data())
def test_denoiser_survives_any_values(rate: int, channels: int, data: st.DataObject) -> None:
    frames = data.draw(st.integers(0, 3 * rate // 100))
    x = data.draw(arrays(np.float32, (frames, channels), elements=_FLOATS))
    cuts = sorted(data.draw(st.lists(st.integers(0, frames), max_size=5)))
    d = Denoiser(rate, channels)
    parts = [d.process(x[a:b]) for a, b in zip([0, *cuts], [*cuts, frames], strict=True)]
    y = np.concatenate([*parts, d.flush()])
    assert y.shape == (frames + d.latency_samples, channels) and y.dtype == np.float32
    assert np.all(np.isfinite(y)) and np.all(np.abs(y) <= 1.0)
