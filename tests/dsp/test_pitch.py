"""The periodicity features (server/dsp/pitch.py) and the denoiser with a model that reads them."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from dsp_signals import assert_chunking_invariant, noisy_speech, run, weights_in_use
from test_model import _random_weights

from server.dsp import SUPPORTED_RATES, Denoiser
from server.dsp import denoiser as denoiser_mod
from server.dsp.model import band_centres_hz, band_weights
from server.dsp.pitch import PitchFeatures
from server.dsp.stft import Stft


def _features(rate: int) -> tuple[PitchFeatures, Stft]:
    frame = round(rate * 0.032)
    stft = Stft(frame, rate // 100)
    freqs = np.arange(frame // 2 + 1) * rate / frame
    return PitchFeatures(rate, rate // 100, stft.analysis, band_weights(freqs, band_centres_hz())), stft


def _harmonic(rate: int, f0: float, seconds: float) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return sum(np.sin(2 * np.pi * f0 * k * t + k) / k for k in range(1, int(3900 // f0)))  # type: ignore[return-value]


def _run(rate: int, x: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """Features of every frame of ``x`` (rows, samples), fed in chunks of ``chunk`` samples (None:
    at once): (hops, rows, bands + 1)."""
    pf, _ = _features(rate)
    state: dict[str, np.ndarray] = {}
    pf.init_state(state, x.shape[0])  # type: ignore[arg-type]
    step = chunk or x.shape[1]
    return np.concatenate([pf.run(state, x[:, i : i + step], None)  # type: ignore[arg-type]
                           for i in range(0, x.shape[1], step)])


@pytest.mark.parametrize("f0", [90.0, 150.0, 260.0])
def test_a_voice_like_tone_correlates_and_noise_does_not(f0: float) -> None:
    rate = 16000
    rng = np.random.default_rng(3)
    f = _run(rate, np.stack([_harmonic(rate, f0, 1.0), rng.normal(size=rate)]))[5:]  # full frames
    centres = band_centres_hz()
    speech_bands = (centres > 100) & (centres < 3500)
    assert f.shape == (95, 2, 41)
    assert np.mean(f[:, 0, :-1][:, speech_bands]) > 0.9 and np.mean(f[:, 0, -1]) > 0.85
    # noise: narrow bands are quasi-periodic at their centre frequency, so their correlation
    # scatters (as RNNoise's does); the wider bands above 1.5 kHz and the frame's peak stay low
    wide = centres > 1500
    assert np.mean(np.abs(f[:, 1, :-1][:, wide])) < 0.3 and np.mean(f[:, 1, -1]) < 0.5
    assert np.mean(np.abs(f[:, 1, :-1][:, wide])) < np.mean(f[:, 0, :-1][:, wide]) - 0.5
    assert np.all(np.abs(f) <= 1.0)


def test_another_pitch_in_a_band_lowers_its_correlation() -> None:
    """Two voices: the features follow one pitch, so the bands the other voice dominates
    correlate less than with one voice alone."""
    rate = 16000
    one = _harmonic(rate, 120.0, 1.0)
    two = one + 1.5 * _harmonic(rate, 173.0, 1.0)
    f = _run(rate, np.stack([one, two]))[5:]
    assert np.mean(f[:, 1, :-1]) < np.mean(f[:, 0, :-1]) - 0.1


@pytest.mark.parametrize("rate", SUPPORTED_RATES)
def test_chunking_does_not_change_the_features(rate: int) -> None:
    hop = rate // 100
    x = np.stack([_harmonic(rate, 140.0, 0.5) + 0.1 * np.random.default_rng(1).normal(size=rate // 2)] * 2)
    whole = _run(rate, x)
    for hops in (1, 7):
        np.testing.assert_allclose(_run(rate, x, chunk=hops * hop), whole, atol=1e-6)


@pytest.mark.parametrize("rate", SUPPORTED_RATES)
def test_the_same_voice_gives_the_same_features_at_every_rate(rate: int) -> None:
    """The bands are in Hz and the lag search covers 62.5-400 Hz at every rate."""
    f = _run(rate, _harmonic(rate, 140.0, 0.5)[None])[5:, 0]
    ref = _run(16000, _harmonic(16000, 140.0, 0.5)[None])[5:, 0]
    speech_bands = np.flatnonzero((band_centres_hz() > 100) & (band_centres_hz() < 3500))
    np.testing.assert_allclose(f[:, speech_bands].mean(0), ref[:, speech_bands].mean(0), atol=0.1)


def test_silence_gives_zeros_not_nans() -> None:
    f = _run(16000, np.zeros((1, 1600)))
    assert np.all(np.isfinite(f)) and np.all(f[..., :-1] == 0.0)


@pytest.fixture
def pitch_weights() -> Iterator[dict[str, np.ndarray]]:
    with weights_in_use(_random_weights(seed=12, pitch_dense=8)) as w:
        yield w


def test_the_engine_feeds_the_features_to_the_model(pitch_weights: dict[str, np.ndarray]) -> None:
    den = Denoiser(16000)
    assert den.pool.model is not None and den.pool.model.n_pitch == 41
    x = noisy_speech(16000, 1.0)
    y = run(den, x)
    denoiser_mod.use_weights({**pitch_weights, "dense_p.weight": pitch_weights["dense_p.weight"] * 0.0})
    z = run(Denoiser(16000), x)
    assert np.max(np.abs(y - z)) > 1e-4


@pytest.mark.parametrize("rate", SUPPORTED_RATES)
def test_chunking_does_not_change_the_output(pitch_weights: dict[str, np.ndarray], rate: int) -> None:
    assert_chunking_invariant(rate)


def test_batched_streams_match_single_streams(pitch_weights: dict[str, np.ndarray]) -> None:
    """One hop of several streams as one batch gives each stream what it gets alone."""
    rate, hop = 16000, 160
    xs = [noisy_speech(rate, 0.4) * g for g in (1.0, 0.3, 2.0)]
    alone = [run(Denoiser(rate), x, chunk=hop) for x in xs]
    pool = Denoiser(rate).pool
    dens = [Denoiser(rate, pool=pool) for _ in xs]
    outs: list[list[np.ndarray]] = [[] for _ in xs]
    for i in range(0, xs[0].shape[0], hop):
        for k, y in enumerate(pool.process_many([(d, x[i : i + hop]) for d, x in zip(dens, xs, strict=True)])):
            outs[k].append(y)
    for k in range(len(xs)):
        np.testing.assert_allclose(np.concatenate(outs[k]), alone[k][: len(np.concatenate(outs[k]))], atol=1e-6)
