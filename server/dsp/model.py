"""Learned band-gain model (RNNoise-style), plain numpy inference, streaming.

The network is trained by ``training/train.py`` (torch, training only) and shipped
as ``weights/gain_model.npz``. It follows the band-gain idea of Valin, "A Hybrid
DSP/Deep Learning Approach to Real-Time Full-Band Speech Enhancement", MMSP 2018:
per hop, log energies on ERB-spaced bands go through a small recurrent network
that outputs one gain per band plus a voice-activity probability; the band gains
are interpolated back to the STFT bins with the same triangular weights.

Interface (one state object per stream, all channels at once)::

    model = GainModel(sample_rate, frame_len, analysis_window_energy, channels)
    gains, voice = model.step(power)   # power: |Y|^2, shape (channels, frame_len // 2 + 1)
    model.reset()

``power`` is the periodogram of the current analysis frame (after any fill
correction), exactly as the denoiser computes it; ``analysis_window_energy`` is
``sum(window**2)`` of the analysis window, used to turn the periodogram into a
rate- and window-independent power spectral density. ``gains`` (channels, n_bins)
are in [0, 1] (raised to ``gain_exponent``), ``voice`` (channels,) in [0, 1]. Both
are views into internal buffers, valid until the next ``step``.

The bands are defined in Hz (``BAND_TOP_HZ`` = 8 kHz, the range of the 16 kHz
training data), so the same weights serve every sample rate whose bin spacing is
about 31 Hz (a 32 ms analysis window) or finer. Bins above 8 kHz take the mean
gain of the top ``HIGH_BAND_SPAN`` bands (fricatives and noise above 8 kHz follow the
6-8 kHz region); at 8 kHz input the bands above 4 kHz hold no bins and read as
silence, a case the training data includes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import expit

__all__ = ["GainModel", "band_centres_hz", "band_weights", "load_weights", "DEFAULT_WEIGHTS"]

N_BANDS = 40
BAND_TOP_HZ = 8000.0
MIN_BAND_SPACING_HZ = 62.5  # at least two 31.25 Hz bins between band centres
REF_RATE_HZ = 16000.0  # PSD scale reference: features equal a 16 kHz periodogram / window energy
LOG_FLOOR = 1e-12  # power floor before the log (about -120 dB re full scale)
HIGH_BAND_SPAN = 4  # bands whose mean gain is used above BAND_TOP_HZ
# The training audio is 16 kHz, so the top band always saw a resampler's anti-alias roll-off
# (about -20 dB at 7.7 kHz). Full-band input has real energy there, which the network reads as
# noise (measured: every band gain fell, up to 0.35 in the top band, and 48 kHz dPESQ lost 0.13).
# Above 16 kHz the features therefore see the band through the same raised-cosine roll-off.
FEATURE_ROLLOFF_HZ = (7500.0, 8000.0)
DEFAULT_WEIGHTS = Path(__file__).with_name("weights") / "gain_model.npz"

Array = npt.NDArray[np.float64]


def _erb_width_hz(f: float) -> float:
    """Equivalent rectangular bandwidth (Glasberg & Moore 1990)."""
    return 24.7 * (1.0 + 0.00437 * f)


def band_centres_hz(n_bands: int = N_BANDS, top_hz: float = BAND_TOP_HZ) -> Array:
    """Band centres from 0 Hz to ``top_hz``: ERB-spaced, but never closer than 62.5 Hz.

    A plain ERB scale would put the lowest centres closer than one STFT bin, which
    leaves empty bands; the minimum spacing makes the low bands linear instead.
    """
    lo, hi = 0.01, 5.0
    for _ in range(60):  # bisection on the spacing in ERB units so n_bands reach top_hz
        step = 0.5 * (lo + hi)
        c = [0.0]
        while len(c) < n_bands:
            c.append(c[-1] + max(MIN_BAND_SPACING_HZ, step * _erb_width_hz(c[-1])))
        if c[-1] > top_hz:
            hi = step
        else:
            lo = step
    c_arr = np.asarray(c, dtype=np.float64)
    scaled: Array = c_arr * (top_hz / c_arr[-1])
    return scaled


def band_weights(bin_freqs_hz: Array, centres_hz: Array) -> Array:
    """Triangular interpolation weights, shape (n_bins, n_bands); rows sum to 1 up to the top centre.

    Bins above the top centre get zero weight (see ``GainModel`` for their gain).
    """
    f = np.asarray(bin_freqs_hz, dtype=np.float64)
    c = np.asarray(centres_hz, dtype=np.float64)
    w = np.zeros((f.size, c.size))
    for i in range(c.size - 1):
        lo, hi = c[i], c[i + 1]
        m = (f >= lo) & (f < hi)
        t = (f[m] - lo) / (hi - lo)
        w[m, i] = 1.0 - t
        w[m, i + 1] = t
    w[f == c[-1], -1] = 1.0
    return w


def load_weights(path: str | Path = DEFAULT_WEIGHTS) -> dict[str, Array]:
    with np.load(str(path)) as z:
        return {k: np.asarray(z[k], dtype=np.float64) for k in z.files}


def _sigmoid(x: Array, out: Array) -> Array:
    # scipy's logistic is one call and safe for any x (measured 1 us against 4-5 us for the 5-call form).
    return expit(x, out=out)  # type: ignore[no-any-return]


# Read-only arrays derived from a weights dict (transposed matrices) and from a (weights, rate,
# frame) triple (band matrices), shared by every stream: per-stream copies cost 1.15 MiB a stream.
_SHARED: dict[tuple[int, ...], tuple[Any, ...]] = {}


def _shared(key: tuple[int, ...], make: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
    if key not in _SHARED:
        values = make()
        for v in values:
            if isinstance(v, np.ndarray):
                v.flags.writeable = False
        _SHARED[key] = values
    return _SHARED[key]


class _Gru:
    """One GRU layer with torch's gate layout (r, z, n) and equations, batched over channels."""

    def __init__(self, w_ih: Array, w_hh: Array, b_ih: Array, b_hh: Array, channels: int) -> None:
        self.hidden = w_hh.shape[1]
        h = self.hidden
        self.w_ih_t, self.w_hh_t = _shared(  # (in, 3h), (h, 3h)
            (id(w_ih), id(w_hh)), lambda: (np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T), w_ih, w_hh))[:2]
        self.b_ih = b_ih
        self.b_hh = b_hh
        self.state = np.zeros((channels, h))  # hidden state per channel
        self._gi = np.zeros((channels, 3 * h))
        self._gh = np.zeros((channels, 3 * h))
        self._rz = np.zeros((channels, 2 * h))
        self._n = np.zeros((channels, h))

    def reset(self) -> None:
        self.state.fill(0.0)

    def step(self, x: Array) -> Array:
        h = self.hidden
        gi, gh, rz, n = self._gi, self._gh, self._rz, self._n
        np.matmul(x, self.w_ih_t, out=gi)
        gi += self.b_ih
        np.matmul(self.state, self.w_hh_t, out=gh)
        gh += self.b_hh
        np.add(gi[:, : 2 * h], gh[:, : 2 * h], out=rz)
        _sigmoid(rz, rz)
        r, z = rz[:, :h], rz[:, h:]
        np.multiply(r, gh[:, 2 * h :], out=n)
        n += gi[:, 2 * h :]
        np.tanh(n, out=n)
        # h' = (1 - z) * n + z * h  ==  n + z * (h - n)
        self.state -= n
        self.state *= z
        self.state += n
        return self.state


class GainModel:
    """Streaming band-gain network for ``channels`` independent channels.

    ``sample_rate`` and ``frame_len`` fix the bin frequencies (``k * rate / frame_len``);
    ``analysis_window_energy`` is ``sum(analysis_window ** 2)``. ``gain_exponent`` > 1
    makes the model suppress more than it was trained to (1.0 = as trained).
    """

    def __init__(self, sample_rate: int, frame_len: int, analysis_window_energy: float, channels: int = 1,
                 weights: dict[str, Array] | str | Path | None = None, gain_exponent: float = 1.0) -> None:
        p = load_weights(DEFAULT_WEIGHTS if weights is None else weights) if not isinstance(weights, dict) \
            else weights
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.n_bins = frame_len // 2 + 1
        self.gain_exponent = float(gain_exponent)
        n_bands = int(p["centres_hz"].size)
        freqs = np.arange(self.n_bins) * sample_rate / frame_len
        centres = p["centres_hz"]

        def band_matrices() -> tuple[Any, ...]:
            w = band_weights(freqs, centres)  # (n_bins, n_bands)
            norm = w.sum(axis=0)
            analysis_w = (w / np.maximum(norm, 1e-9)).T.copy()  # (n_bands, n_bins): band means
            if sample_rate > 2 * BAND_TOP_HZ:
                lo, hi = FEATURE_ROLLOFF_HZ
                ramp = 0.5 * (1.0 + np.cos(np.pi * np.clip((freqs - lo) / (hi - lo), 0.0, 1.0)))
                analysis_w *= ramp[None, :]
            # bands above Nyquist (8 kHz input); gains back to bins; bins above the top centre
            return analysis_w, norm < 1e-9, w, freqs > centres[-1], centres

        self._analysis_w, self._empty_band, self._synth_w, self._high_bins, _ = _shared(
            (id(centres), sample_rate, frame_len), band_matrices)
        self._any_high = bool(np.any(self._high_bins))
        self._psd_scale = REF_RATE_HZ / (analysis_window_energy * sample_rate)
        self._feat_mean = p["feat_mean"]
        self._feat_std = p["feat_std"]
        self._dense_w_t, self._gain_w_t, self._vad_w_t = _shared(
            (id(p["dense.weight"]), id(p["gain.weight"]), id(p["vad.weight"])),
            lambda: (np.ascontiguousarray(p["dense.weight"].T), np.ascontiguousarray(p["gain.weight"].T),
                     np.ascontiguousarray(p["vad.weight"].T), p["dense.weight"], p["gain.weight"], p["vad.weight"]),
        )[:3]
        self._dense_b = p["dense.bias"]
        self._gru1 = _Gru(p["gru1.weight_ih_l0"], p["gru1.weight_hh_l0"], p["gru1.bias_ih_l0"],
                          p["gru1.bias_hh_l0"], self.channels)
        self._gru2 = _Gru(p["gru2.weight_ih_l0"], p["gru2.weight_hh_l0"], p["gru2.bias_ih_l0"],
                          p["gru2.bias_hh_l0"], self.channels)
        self._gain_b = p["gain.bias"]
        self._vad_b = p["vad.bias"]
        c, h1, h2 = self.channels, self._gru1.hidden, self._gru2.hidden
        dense_out = self._dense_b.size
        self._feat = np.zeros((c, n_bands))
        self._dense = np.zeros((c, dense_out))
        self._cat = np.zeros((c, dense_out + h1 + h2))  # [dense, gru1, gru2] -> gain layer
        self._band_gain = np.zeros((c, n_bands))
        self._vad = np.zeros((c, 1))
        self._gains = np.ones((c, self.n_bins))

    @property
    def n_bands(self) -> int:
        return int(self._feat.shape[1])

    def reset(self) -> None:
        self._gru1.reset()
        self._gru2.reset()

    def features(self, power: npt.NDArray[np.floating], out: Array | None = None) -> Array:
        """Normalised log band energies, shape (channels, n_bands)."""
        out = self._feat if out is None else out
        np.matmul(power, self._analysis_w.T, out=out)
        out *= self._psd_scale
        out[:, self._empty_band] = 0.0
        np.maximum(out, LOG_FLOOR, out=out)
        np.log10(out, out=out)
        out -= self._feat_mean
        out /= self._feat_std
        return out

    def step(self, power: npt.NDArray[np.floating]) -> tuple[Array, Array]:
        """One hop: ``power`` (channels, n_bins) -> (bin gains (channels, n_bins), voice (channels,))."""
        feat = self.features(power)
        d = self._dense
        np.matmul(feat, self._dense_w_t, out=d)
        d += self._dense_b
        np.tanh(d, out=d)
        h1 = self._gru1.step(d)
        h2 = self._gru2.step(h1)
        nd, n1 = d.shape[1], h1.shape[1]
        cat = self._cat
        cat[:, :nd] = d
        cat[:, nd : nd + n1] = h1
        cat[:, nd + n1 :] = h2
        bg = self._band_gain
        np.matmul(cat, self._gain_w_t, out=bg)
        bg += self._gain_b
        _sigmoid(bg, bg)
        if self.gain_exponent != 1.0:
            np.power(bg, self.gain_exponent, out=bg)
        np.matmul(h1, self._vad_w_t, out=self._vad)
        self._vad += self._vad_b
        _sigmoid(self._vad, self._vad)
        g = self._gains
        np.matmul(bg, self._synth_w.T, out=g)
        if self._any_high:
            g[:, self._high_bins] = bg[:, -HIGH_BAND_SPAN:].mean(axis=1, keepdims=True)
        return g, self._vad[:, 0]
