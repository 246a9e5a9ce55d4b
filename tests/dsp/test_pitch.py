"""The periodicity features (server/dsp/pitch.py) and the denoiser with a model that reads them."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from dsp_signals import run, speech_like, white
from test_model import _random_weights

from server.dsp import SUPPORTED_RATES, Denoiser
from server.dsp import denoiser as denoiser_mod
from server.dsp.model import band_centres_hz, band_weights
from server.dsp.pitch import PitchFeatures
from server.dsp.stft import Stft


def _features(rate: int) -> PitchFeatures:
    frame = round(rate * 0.032)
    hop = rate // 100
    freqs = np.arange(frame // 2 + 1) * rate / frame
    return PitchFeatures(rate, frame, hop, Stft(frame, hop).analysis, band_weights(freqs, band_centres_hz()))


def _harmonic(rate: int, f0: float, seconds: float) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return sum(np.sin(2 * np.pi * f0 * k * t + k) / k for k in range(1, int(3900 // f0)))  # type: ignore[return-value]


def _run(pf: PitchFeatures, x: np.ndarray, chunk: int | None = None) -> np.ndarray:
    state: dict[str, np.ndarray] = {}
    pf.init_state(state, x.shape[0])  # type: ignore[arg-type]
    if chunk is None:
        return pf.run(state, x, None)  # type: ignore[arg-type]
    return np.concatenate([pf.run(state, x[:, i : i + chunk], None)  # type: ignore[arg-type]
                           for i in range(0, x.shape[1], chunk)])


@pytest.mark.parametrize("f0", [90.0, 150.0, 260.0])
def test_a_voice_like_tone_correlates_and_noise_does_not(f0: float) -> None:
    rate = 16000
    pf = _features(rate)
    rng = np.random.default_rng(3)
    x = np.stack([_harmonic(rate, f0, 1.0), rng.normal(size=rate)])
    f = _run(pf, x)[30:]  # after the first frames (zero history)
    centres = band_centres_hz()
    speech_bands = (centres > 100) & (centres < 3500)
    assert f.shape == (70, 2, 41)
    assert np.mean(f[:, 0, :-1][:, speech_bands]) > 0.9 and np.mean(f[:, 0, -1]) > 0.95
    assert np.mean(np.abs(f[:, 1, :-1][:, speech_bands])) < 0.35 and np.mean(f[:, 1, -1]) < 0.5
    assert np.all(np.abs(f) <= 1.0)


def test_another_pitch_in_a_band_lowers_its_correlation() -> None:
    """Two voices: the frame correlates with one pitch period, so bands that the other voice
    dominates correlate less than with one voice alone."""
    rate = 16000
    pf = _features(rate)
    one = _harmonic(rate, 120.0, 1.0)
    two = one + 1.5 * _harmonic(rate, 173.0, 1.0)
    f = _run(pf, np.stack([one, two]))[30:]
    assert np.mean(f[:, 1, :-1]) < np.mean(f[:, 0, :-1]) - 0.1


@pytest.mark.parametrize("rate", SUPPORTED_RATES)
def test_chunking_does_not_change_the_features(rate: int) -> None:
    pf = _features(rate)
    hop = rate // 100
    x = np.stack([_harmonic(rate, 140.0, 0.5) + 0.1 * np.random.default_rng(1).normal(size=rate // 2)] * 2)
    whole = _run(pf, x)
    for hops in (1, 7):
        np.testing.assert_allclose(_run(pf, x, chunk=hops * hop), whole, atol=1e-6)


@pytest.fixture
def pitch_weights() -> Iterator[dict[str, np.ndarray]]:
    w = _random_weights(seed=12, pitch_dense=8)
    saved = denoiser_mod.use_weights(w)
    try:
        yield w
    finally:
        denoiser_mod.use_weights(saved)


def _mix(sr: int, seconds: float) -> np.ndarray:
    return (speech_like(sr, seconds) + white(sr, seconds, level_dbfs=-30.0)).astype(np.float32)[:, None]


def test_the_engine_feeds_the_features_to_the_model(pitch_weights: dict[str, np.ndarray]) -> None:
    den = Denoiser(16000)
    assert den.pool.model is not None and den.pool.model.n_pitch == 41
    x = _mix(16000, 1.0)
    y = run(den, x)
    denoiser_mod.use_weights({**pitch_weights, "dense_p.weight": pitch_weights["dense_p.weight"] * 0.0})
    z = run(Denoiser(16000), x)
    assert np.max(np.abs(y - z)) > 1e-4


@pytest.mark.parametrize("rate", SUPPORTED_RATES)
def test_chunking_does_not_change_the_output(pitch_weights: dict[str, np.ndarray], rate: int) -> None:
    x = _mix(rate, 0.6)
    whole = run(Denoiser(rate), x)
    for chunk in (1 + rate // 100, round(rate * 0.037)):
        np.testing.assert_allclose(run(Denoiser(rate), x, chunk=chunk), whole, atol=1e-6)


def test_batched_streams_match_single_streams(pitch_weights: dict[str, np.ndarray]) -> None:
    """One hop of several streams as one batch gives each stream what it gets alone."""
    rate, hop = 16000, 160
    xs = [_mix(rate, 0.4) * g for g in (1.0, 0.3, 2.0)]
    alone = [run(Denoiser(rate), x, chunk=hop) for x in xs]
    pool = Denoiser(rate).pool
    dens = [Denoiser(rate, pool=pool) for _ in xs]
    outs: list[list[np.ndarray]] = [[] for _ in xs]
    for i in range(0, xs[0].shape[0], hop):
        for k, y in enumerate(pool.process_many([(d, x[i : i + hop]) for d, x in zip(dens, xs, strict=True)])):
            outs[k].append(y)
    for k in range(len(xs)):
        np.testing.assert_allclose(np.concatenate(outs[k]), alone[k][: len(np.concatenate(outs[k]))], atol=1e-6)
