"""Periodicity features for the learned gain: per band, how well the frame matches itself one
pitch period earlier.

A band-energy network cannot tell a voice's harmonics from noise in the same band: it sees only
the band's energy. RNNoise (Valin, "A hybrid DSP/deep learning approach to real-time full-band
speech enhancement", MMSP 2018) and PercepNet (Valin et al., Interspeech 2020) give the network
the *pitch correlation* of each band: the normalised correlation between the frame's spectrum
``X`` and the spectrum ``P`` of the same window placed one pitch period ``T`` back in time,

    rho_b = Re(sum_k w_kb X_k conj(P_k)) / sqrt(sum_k w_kb |X_k|^2 * sum_k w_kb |P_k|^2),

close to 1 in a band where a periodic voice dominates, near 0 where noise does, and lower in a
band that another voice with another pitch dominates. ``T`` is the lag in 2.5-16 ms
(62.5-400 Hz) with the largest normalised autocorrelation of the frame, taken from its power
spectrum (the inverse FFT of the periodogram, the analysis window's own autocorrelation divided
out, as Boersma 1993 does), preferring a half or a third of it when that is nearly as good (the
usual octave errors); that normalised autocorrelation is the last feature.

Cost per frame and row: one inverse FFT (the lag search), one FFT (the lagged frame) and two band
matrix products. Everything is causal: the lagged window ends ``T`` samples before the frame's
end, so no delay is added. The state is the last ``frame_len - hop + max_lag`` input samples per
row; like the other pieces, :meth:`PitchFeatures.run` processes ``(rows, hops * hop)`` new samples
for many hops and rows at once, so the features do not depend on chunking or batching. Pure numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .state import RowState

Array = npt.NDArray[np.floating[Any]]
CArray = npt.NDArray[np.complexfloating[Any, Any]]

MIN_PITCH_HZ = 62.5  # a lag of half the 32 ms frame: the longest its autocorrelation holds well
MAX_PITCH_HZ = 400.0
SEARCH_TOP_HZ = 8000.0  # the lag search reads the periodogram up to here (all of it at 16 kHz)
OCTAVE_PREFERENCE = 0.85  # take T/2 or T/3 when its correlation is at least this share of T's
ENERGY_FLOOR = 1e-20


class PitchFeatures:
    """Per-band pitch correlation of each frame, on a row state.

    ``analysis`` is the STFT's analysis window, ``band_w`` ``(n_bins, n_bands)`` weighs the bins of
    each band (the model's triangular bands). ``run(state, x, spec)`` takes the new samples
    ``(rows, hops * hop)`` and the spectra of the frames they complete ``(hops, rows, n_bins)``,
    made with ``analysis`` (None: computed here), and returns ``(hops, rows, n_bands + 1)``:
    ``rho_b`` per band, then the frame's normalised autocorrelation at its pitch lag.
    """

    def __init__(self, sample_rate: int, hop: int, analysis: Array, band_w: Array,
                 dtype: type[np.floating] = np.float32) -> None:
        n = len(analysis)
        self.frame_len, self.hop, self.dtype = n, hop, dtype
        self.analysis = np.asarray(analysis, np.float64)
        self.band_w = np.asarray(band_w, dtype)
        self.n_features = self.band_w.shape[1] + 1
        # The lag search runs on the bins up to SEARCH_TOP_HZ: the inverse FFT of that part of the
        # periodogram is the autocorrelation of the frame low-passed and decimated to
        # 2 * SEARCH_TOP_HZ (16 kHz at every rate above; the whole frame at 8 and 16 kHz), so a
        # 48 kHz stream pays for a 512-point inverse FFT, not a 1536-point one.
        self._search_bins = min(n // 2 + 1, int(SEARCH_TOP_HZ * n / sample_rate) + 1)
        self._search_n = 2 * (self._search_bins - 1)
        self._to_samples = n / self._search_n  # one lag step of the search, in samples
        w_ac = np.fft.irfft((np.abs(np.fft.rfft(self.analysis)) ** 2)[: self._search_bins], self._search_n)
        w_ac /= w_ac[0]
        search_rate = sample_rate / self._to_samples
        self.min_lag = max(1, int(search_rate / MAX_PITCH_HZ))
        self.max_lag = min(self._search_n // 2, int(search_rate / MIN_PITCH_HZ))
        self._inv_w_ac = (1.0 / w_ac[self.min_lag : self.max_lag + 1]).astype(dtype)
        self.max_delay = int(np.ceil(self.max_lag * self._to_samples)) + 1  # the longest lag, in samples
        self.keep = n - hop + self.max_delay

    def init_state(self, state: RowState, rows: int) -> None:
        state["pitch.history"] = np.zeros((rows, self.keep))

    def run(self, state: RowState, x: Array, spec: CArray | None) -> Array:
        n, hop, max_lag, min_lag, max_delay = self.frame_len, self.hop, self.max_lag, self.min_lag, self.max_delay
        rows = x.shape[0]
        hops = x.shape[1] // hop
        history = state["pitch.history"]
        sig = np.concatenate([history, x], axis=1, dtype=np.float64)
        history[...] = sig[:, sig.shape[1] - self.keep :]
        if hops == 0:
            return np.zeros((0, rows, self.n_features), self.dtype)
        # segment t: the max_delay samples before frame t, then frame t (which ends at keep + (t + 1) hop)
        seg = np.ndarray((rows, hops, n + max_delay), np.float64, sig, 0, (sig.strides[0], hop * sig.strides[1],
                                                                            sig.strides[1]))
        if spec is None:
            spec = np.fft.rfft(seg[..., max_delay:] * self.analysis, axis=-1).transpose(1, 0, 2)
        power = np.empty(spec.shape, self.dtype)
        np.multiply(spec.real, spec.real, out=power)
        power += spec.imag * spec.imag
        # the lag: the frame's normalised autocorrelation, from its periodogram
        ac = np.fft.irfft(power[..., : self._search_bins], self._search_n)[..., : max_lag + 1].astype(self.dtype)
        corr = ac[..., min_lag:]
        corr *= self._inv_w_ac
        corr /= np.maximum(ac[..., :1], ENERGY_FLOOR)
        best = np.argmax(corr, axis=-1)  # (hops, rows)
        peak = np.take_along_axis(corr, best[..., None], -1)
        for div in (2, 3):  # octave errors: a multiple of the period correlates as well
            idx = np.rint((best + min_lag) / div).astype(np.intp) - min_lag
            cc = np.take_along_axis(corr, np.maximum(idx, 0)[..., None], -1)[..., 0]
            best = np.where((idx >= 0) & (cc > OCTAVE_PREFERENCE * peak[..., 0]), idx, best)
        # to samples: a parabola through the peak and its neighbours gives the lag to a fraction of
        # a search step (a step is 3 samples at 48 kHz), then the nearest sample
        i = np.clip(best, 1, corr.shape[-1] - 2)[..., None]
        left, mid, right = (np.take_along_axis(corr, i + d, -1)[..., 0] for d in (-1, 0, 1))
        curve = left - 2.0 * mid + right
        shift = np.where((curve < 0.0) & (i[..., 0] == best), 0.5 * (left - right) / np.minimum(curve, -1e-12), 0.0)
        delay = np.rint((best + min_lag + np.clip(shift, -0.5, 0.5)) * self._to_samples).astype(np.intp)
        # the analysis window placed delay samples back: its first sample is max_delay - delay into the segment
        start = (max_delay - np.minimum(delay, max_delay).T)[..., None] + np.arange(n)  # (rows, hops, n)
        lagged = np.take_along_axis(seg, start, axis=-1)
        lagged *= self.analysis
        p_spec = np.fft.rfft(lagged, axis=-1).transpose(1, 0, 2)  # (hops, rows, bins)
        cross = np.empty(spec.shape, self.dtype)
        np.multiply(spec.real, p_spec.real, out=cross)
        cross += spec.imag * p_spec.imag
        p_power = np.empty(spec.shape, self.dtype)
        np.multiply(p_spec.real, p_spec.real, out=p_power)
        p_power += p_spec.imag * p_spec.imag
        w = self.band_w
        den = (power @ w) * (p_power @ w)
        np.maximum(den, ENERGY_FLOOR, out=den)
        np.sqrt(den, out=den)
        out = np.empty((hops, rows, self.n_features), self.dtype)
        np.divide(cross @ w, den, out=out[..., :-1])
        out[..., -1:] = peak
        np.clip(out, -1.0, 1.0, out=out)
        return out
