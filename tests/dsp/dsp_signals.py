"""Shared signals and helpers for the denoiser tests (imported by the test modules)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np


def db(ratio: float) -> float:
    return float(10.0 * np.log10(ratio))


def energy_db(x: np.ndarray) -> float:
    """Energy in dB (relative to 1), with a floor so silence is finite."""
    return db(float(np.sum(np.asarray(x, dtype=np.float64) ** 2)) + 1e-30)


def speech_like(sr: int, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated harmonic signal at about -20 dBFS RMS, mono float64.

    f0 glides between 110 and 220 Hz, harmonics fall off at 6 dB/octave up to 4 kHz,
    and a 4 Hz syllable envelope with short pauses gives it speech-like on/off structure.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    f0 = 160.0 + 50.0 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = np.zeros_like(t)
    for k in range(1, 26):
        if k * 220.0 > min(4000.0, sr / 2 - 200):
            break
        x += np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k
    env = np.clip(np.sin(2 * np.pi * 4.0 * t) + 0.3, 0.0, None) ** 0.7
    x *= env
    x *= 0.1 / np.sqrt(np.mean(x**2))
    return x


def white(sr: int, seconds: float, level_dbfs: float = -30.0, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(int(sr * seconds)) * 10.0 ** (level_dbfs / 20.0)


def run(den, x: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """Feed ``x`` (n, ch) in chunks of ``chunk`` frames (None: all at once), then flush."""
    if chunk is None:
        parts = [den.process(x)]
    else:
        parts = [den.process(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)]
    parts.append(den.flush())
    return np.concatenate(parts)


def noisy_speech(sr: int, seconds: float) -> np.ndarray:
    """:func:`speech_like` in white noise at -30 dBFS: one channel, float32, shape (samples, 1)."""
    return (speech_like(sr, seconds) + white(sr, seconds, level_dbfs=-30.0)).astype(np.float32)[:, None]


def assert_chunking_invariant(rate: int) -> None:
    """The weights in use give the same output for :func:`noisy_speech` whole and in two chunkings."""
    from server.dsp import Denoiser

    x = noisy_speech(rate, 0.6)
    whole = run(Denoiser(rate), x)
    for chunk in (1 + rate // 100, round(rate * 0.037)):
        np.testing.assert_allclose(run(Denoiser(rate), x, chunk=chunk), whole, atol=1e-6)


@contextlib.contextmanager
def weights_in_use(weights: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """The denoiser's model runs ``weights`` inside the block, and what it ran before after it."""
    from server.dsp import denoiser as denoiser_mod

    saved = denoiser_mod.use_weights(weights)
    try:
        yield weights
    finally:
        denoiser_mod.use_weights(saved)
