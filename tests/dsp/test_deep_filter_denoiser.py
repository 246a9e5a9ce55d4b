"""The streaming denoiser's guarantees with a deep-filter model (issue #15), torch-free.

Random deep-filter weights (taps far from zero) replace the shipped ones for these tests, so the
filter really changes the low bins: chunking invariance, exact pass-through, the attenuation limit
and the floor must hold through it, at every rate.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from dsp_signals import assert_chunking_invariant, energy_db, noisy_speech, run, weights_in_use, white
from test_model import _random_weights

from server.dsp import SUPPORTED_RATES, Denoiser
from server.dsp import denoiser as denoiser_mod


@pytest.fixture
def df_weights() -> Iterator[dict[str, np.ndarray]]:
    with weights_in_use(_random_weights(seed=11, df_bins=128, df_taps=2)) as w:
        yield w


def test_the_engine_runs_the_deep_filter(df_weights: dict[str, np.ndarray]) -> None:
    den = Denoiser(16000)
    model = den.pool.model
    assert model is not None and model.df_bins == 128
    x = noisy_speech(16000, 1.0)
    y = run(den, x)[den.latency_samples :]
    # the same weights with the filter's output layer zeroed: a different output
    denoiser_mod.use_weights({**df_weights, "df.weight": df_weights["df.weight"] * 0.0,
                              "df.bias": df_weights["df.bias"] * 0.0})
    plain = Denoiser(16000)
    z = run(plain, x)[plain.latency_samples :]
    assert np.max(np.abs(y - z)) > 1e-3


@pytest.mark.parametrize("rate", SUPPORTED_RATES)
def test_chunking_does_not_change_the_output(df_weights: dict[str, np.ndarray], rate: int) -> None:
    assert_chunking_invariant(rate)


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
@pytest.mark.parametrize("mode", ["limit0", "bypass"])
def test_pass_through_is_exact(df_weights: dict[str, np.ndarray], rate: int, mode: str) -> None:
    x = noisy_speech(rate, 0.5)
    den = Denoiser(rate, attenuation_limit_db=0 if mode == "limit0" else None)
    den.bypass = mode == "bypass"
    y = run(den, x, chunk=rate // 30)
    np.testing.assert_allclose(y[den.latency_samples :], x, atol=1e-5)


@pytest.mark.parametrize("limit_db", [6.0, 20.0])
def test_attenuation_limit_holds_through_the_filter(df_weights: dict[str, np.ndarray], limit_db: float) -> None:
    sr = 16000
    x = white(sr, 2.0, -30.0)[:, None].astype(np.float32)
    den = Denoiser(sr, attenuation_limit_db=limit_db)
    y = run(den, x)[den.latency_samples :]
    assert energy_db(x[sr // 2 :]) - energy_db(y[sr // 2 :]) <= limit_db + 0.5


def test_output_never_louder_per_bin_and_finite(df_weights: dict[str, np.ndarray]) -> None:
    """Loud input, silence and a full-scale square wave give finite output within [-1, 1]."""
    sr = 16000
    t = np.arange(sr) / sr
    x = np.concatenate([np.zeros(sr // 2), np.sign(np.sin(2 * np.pi * 220 * t)), 0.5 * white(sr, 1.0, -3.0)])
    y = run(Denoiser(sr), x[:, None].astype(np.float32))
    assert np.all(np.isfinite(y)) and np.max(np.abs(y)) <= 1.0
    assert energy_db(y) <= energy_db(x) + 0.5


def test_switching_weights_keeps_no_old_weights_alive() -> None:
    """A tool that scores many weights in one process (train.py's dev checks, tune.py) switches with
    use_weights: what was derived from the old weights (transposed matrices, band matrices) goes with
    their engines, so the process does not grow by a model per check."""
    from server.dsp import model as model_mod

    saved = denoiser_mod.use_weights(_random_weights(seed=1, df_bins=32, df_taps=2))
    try:
        Denoiser(16000).process(np.zeros((1600, 1), np.float32))
        held = len(model_mod._SHARED)
        for seed in range(2, 6):
            denoiser_mod.use_weights(_random_weights(seed=seed, df_bins=32, df_taps=2))
            Denoiser(16000).process(np.zeros((1600, 1), np.float32))
        assert len(model_mod._SHARED) == held
    finally:
        denoiser_mod.use_weights(saved)
