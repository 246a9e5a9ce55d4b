"""Periodicity features for the learned gain: per band, how well the frame matches itself one
pitch period earlier.

A band-energy network cannot tell a voice's harmonics from noise in the same band: it sees only
the band's energy. RNNoise (Valin, "A hybrid DSP/deep learning approach to real-time full-band
speech enhancement", MMSP 2018) and PercepNet (Valin et al., Interspeech 2020) give the network
the *pitch correlation* of each band: the normalised correlation between the frame's spectrum
``X`` and the spectrum ``P`` of the same window placed one pitch period ``T`` back in time,

    rho_b = Re(sum_k w_kb X_k conj(P_k)) / sqrt(sum_k w_kb |X_k|^2 * sum_k w_kb |P_k|^2),

close to 1 in a band where a periodic voice dominates and near 0 where noise does (and near 0
for a band that holds another voice with another pitch). ``T`` is searched per frame and row as
the lag in 2.5-16.7 ms (60-400 Hz) with the largest normalised autocorrelation of the frame
against its past, preferring a half or a third of it when that is nearly as good (the usual
octave errors); the frame's best normalised correlation is the last feature.

Everything is causal: the lagged window ends ``T`` samples before the frame's end, so no delay
is added. The state is the last ``frame_len - hop + max_lag`` input samples per row; like the
other pieces, :meth:`PitchFeatures.run` processes ``(rows, hops * hop)`` new samples for many hops
and rows at once, so the features do not depend on chunking or batching. Pure numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .state import RowState

Array = npt.NDArray[np.floating[Any]]

MIN_PITCH_HZ = 60.0
MAX_PITCH_HZ = 400.0
OCTAVE_PREFERENCE = 0.85  # take T/2 or T/3 when its correlation is at least this share of T's
ENERGY_FLOOR = 1e-12


class PitchFeatures:
    """Per-band pitch correlation of each frame, on a row state.

    ``band_w`` ``(n_bins, n_bands)`` weighs the bins of each band (the model's triangular bands).
    ``run(state, x, spec)`` takes the new samples ``(rows, hops * hop)`` and the frames' spectra
    ``(hops, rows, n_bins)`` made with ``analysis`` (or None: computed here) and returns
    ``(hops, rows, n_bands + 1)``: ``rho_b`` per band, then the frame's pitch correlation.
    """

    def __init__(self, sample_rate: int, frame_len: int, hop: int, analysis: Array, band_w: Array,
                 dtype: type[np.floating] = np.float32) -> None:
        self.frame_len, self.hop, self.dtype = frame_len, hop, dtype
        self.min_lag = max(1, int(sample_rate / MAX_PITCH_HZ))
        self.max_lag = int(np.ceil(sample_rate / MIN_PITCH_HZ))
        self.keep = frame_len - hop + self.max_lag
        self.analysis = np.asarray(analysis, np.float64)
        self.band_w = np.asarray(band_w, dtype)
        self.n_features = self.band_w.shape[1] + 1
        n = frame_len
        nfft = 1
        while nfft < 2 * n + self.max_lag:
            nfft *= 2
        self._nfft = nfft
        self._search_w = np.hanning(n + 2)[1:-1]  # the frame's weighting for the lag search
        self._w2_spec = np.conj(np.fft.rfft(self._search_w**2, nfft))
        self._lags = np.arange(self.min_lag, self.max_lag + 1)
        self._lag_index = self.max_lag - self._lags  # position of lag T in the correlation

    def init_state(self, state: RowState, rows: int) -> None:
        state["pitch.history"] = np.zeros((rows, self.keep))

    def run(self, state: RowState, x: Array, spec: npt.NDArray[np.complexfloating[Any, Any]] | None) -> Array:
        n, hop, max_lag = self.frame_len, self.hop, self.max_lag
        rows = x.shape[0]
        hops = x.shape[1] // hop
        history = state["pitch.history"]
        sig = np.concatenate([history, x], axis=1, dtype=np.float64)
        history[...] = sig[:, sig.shape[1] - self.keep :]
        if hops == 0:
            return np.zeros((0, rows, self.n_features), self.dtype)
        stride = sig.strides
        # segment t: the max_lag samples before frame t, then frame t; frame t ends at keep + (t+1) hop
        seg = np.ndarray((rows, hops, n + max_lag), np.float64, sig, 0, (stride[0], hop * stride[1], stride[1]))
        cur = seg[..., max_lag:]
        c = cur * self._search_w
        nfft = self._nfft
        c_spec = np.conj(np.fft.rfft(c, nfft))
        s_spec = np.fft.rfft(seg, nfft)
        num = np.fft.irfft(s_spec * c_spec, nfft)[..., self._lag_index]  # sum_j seg[j + max_lag - T] c[j]
        e_lag = np.fft.irfft(np.fft.rfft(seg * seg, nfft) * self._w2_spec, nfft)[..., self._lag_index]
        e_cur = np.einsum("rhn,rhn->rh", c, c)[..., None]
        corr = num / np.sqrt(np.maximum(e_lag, ENERGY_FLOOR) * np.maximum(e_cur, ENERGY_FLOOR))
        best = np.argmax(corr, axis=-1)  # (rows, hops)
        peak = np.take_along_axis(corr, best[..., None], -1)[..., 0]
        lag = self._lags[best]
        for div in (2, 3):  # octave errors: a multiple of the period correlates as well
            cand = np.rint(lag / div).astype(np.intp)
            idx = np.clip(cand - self.min_lag, 0, self._lags.size - 1)
            cc = np.take_along_axis(corr, idx[..., None], -1)[..., 0]
            better = (cand >= self.min_lag) & (cc > OCTAVE_PREFERENCE * peak)
            lag = np.where(better, cand, lag)
        # the analysis window placed lag samples back: its first sample is max_lag - lag into the segment
        start = (max_lag - lag)[..., None] + np.arange(n)
        lagged = np.take_along_axis(seg, start, axis=-1)
        p_spec = np.fft.rfft(lagged * self.analysis, axis=-1).transpose(1, 0, 2)  # (hops, rows, bins)
        if spec is None:
            spec = np.fft.rfft(cur * self.analysis, axis=-1).transpose(1, 0, 2)
        cross = (spec.real * p_spec.real + spec.imag * p_spec.imag).astype(self.dtype)
        ex = (spec.real * spec.real + spec.imag * spec.imag).astype(self.dtype)
        ep = (p_spec.real * p_spec.real + p_spec.imag * p_spec.imag).astype(self.dtype)
        w = self.band_w
        num_b = cross @ w
        den_b = np.sqrt(np.maximum((ex @ w) * (ep @ w), ENERGY_FLOOR * ENERGY_FLOOR))
        out = np.empty((hops, rows, self.n_features), self.dtype)
        np.divide(num_b, den_b, out=out[..., :-1])
        np.clip(out[..., :-1], -1.0, 1.0, out=out[..., :-1])
        out[..., -1] = np.clip(peak.T, -1.0, 1.0)
        return out
