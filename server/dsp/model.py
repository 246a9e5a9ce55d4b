"""Learned band-gain model (RNNoise-style), plain numpy inference, streaming.

The network is trained by ``training/train.py`` (torch, training only) and shipped
as ``weights/gain_model.npz``. It follows the band-gain idea of Valin, "A Hybrid
DSP/Deep Learning Approach to Real-Time Full-Band Speech Enhancement", MMSP 2018:
per hop, log energies on ERB-spaced bands go through a small recurrent network
that outputs one gain per band plus a voice-activity probability; the band gains
are interpolated back to the STFT bins with the same triangular weights.

Interface (constants in the object, the recurrent state in a row state, see ``stft.py``)::

    model = GainModel(sample_rate, frame_len, analysis_window_energy)
    model.init_state(state, rows)
    gains, voice = model.run(state, power)   # power: |Y|^2, (hops, rows, frame_len // 2 + 1)
    gains, voice = model.step(power)         # one hop on the object's own state, (channels, bins)
    gains, voice, taps = model.run_full(state, power)   # taps: deep-filter models, else None
    filtered = model.deep_filter(state, spec, taps)     # sum_i taps_i * spec(t - i) on the low bins

``power`` is the periodogram of each analysis frame (after any fill correction), exactly
as the denoiser computes it; ``analysis_window_energy`` is ``sum(window**2)`` of the
analysis window, used to turn the periodogram into a rate- and window-independent power
spectral density. ``gains`` (same shape as ``power``) are in [0, 1] (raised to
``gain_exponent``), ``voice`` ``(hops, rows)`` in [0, 1].

The bands are defined in Hz (``BAND_TOP_HZ`` = 8 kHz, the range of the 16 kHz
training data), so the same weights serve every sample rate whose bin spacing is
about 31 Hz (a 32 ms analysis window) or finer. Bins above 8 kHz take the mean
gain of the top ``HIGH_BAND_SPAN`` bands (fricatives and noise above 8 kHz follow the
6-8 kHz region); at 8 kHz input the bands above 4 kHz hold no bins and read as
silence, a case the training data includes.

Deep filter (weights with ``df.weight``, issue #15): the network also reads the log PSD of the
lowest ``lo_bins`` bins (0-4 kHz: 31.25 Hz bins at every rate, since the analysis window is
32 ms) through a second dense layer that feeds the first GRU, and outputs ``df_taps`` complex
taps for each of the lowest ``df_bins`` bins (``df_bins`` <= ``lo_bins``; training/filter_bins.py
narrows a trained head to fewer bins, which costs less). The denoiser's low bins become
``gain * Y(t) + sum_i c_i * Y(t - i)``: a residual filter over the current and past frames
(DeepFilterNet's idea, Schroeter et al., ICASSP 2022), so no delay is added. Band gains alone
cannot keep a voice's harmonics and cut another's between them; per-bin complex taps can.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .stft import RowState

__all__ = ["GainModel", "band_centres_hz", "band_weights", "forget_shared", "load_weights", "DEFAULT_WEIGHTS",
           "CArray"]

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

Array = npt.NDArray[np.floating[Any]]  # float32 or float64, as the caller chooses
CArray = npt.NDArray[np.complexfloating[Any, Any]]


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


def _check_df(p: dict[str, Array]) -> None:
    """Deep-filter weights come with their low dense layer and its feature normalisation."""
    for k in ("dense_lo.weight", "df.weight", "lo_mean", "lo_std"):
        if k not in p:
            raise ValueError(f"deep-filter weights lack {k}")


# Read-only arrays derived from a weights dict (transposed matrices) and from a (weights, rate,
# frame) triple (band matrices), shared by every stream: per-stream copies cost 1.15 MiB a stream.
_SHARED: dict[tuple[int, ...], tuple[Any, ...]] = {}


def forget_shared() -> None:
    """Drop every derived array (models built already keep theirs): for switching weights in one
    process (``denoiser.use_weights``), so the old weights' arrays do not stay alive here."""
    _SHARED.clear()


def _shared(key: tuple[int, ...], make: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
    if key not in _SHARED:
        values = make()
        for v in values:
            if isinstance(v, np.ndarray):
                v.flags.writeable = False
        _SHARED[key] = values
    return _SHARED[key]


def _sigmoid(x: Array) -> None:
    """Logistic in place. Its arguments here are bounded (inputs in [-1, 1] through tanh, see
    ``_check_bounded``), so exp cannot overflow; scipy's expit costs 5x more on large batches
    (measured 290 vs 53 us for 25,700 values) and 1.4x more on one row."""
    np.negative(x, out=x)
    np.exp(x, out=x)
    x += 1.0
    np.reciprocal(x, out=x)


def _check_bounded(p: dict[str, Array]) -> None:
    """Refuse weights whose gate pre-activations could overflow exp: every layer after the dense
    one sees inputs in [-1, 1], so |pre-activation| <= sum |w| + |b| per output."""
    for w, b in (("gru1.weight_ih_l0", "gru1.bias_ih_l0"), ("gru1.weight_hh_l0", "gru1.bias_hh_l0"),
                 ("gru2.weight_ih_l0", "gru2.bias_ih_l0"), ("gru2.weight_hh_l0", "gru2.bias_hh_l0"),
                 ("gain.weight", "gain.bias"), ("vad.weight", "vad.bias")):
        bound = float(np.max(np.abs(p[w]).sum(axis=1) + np.abs(p[b])))
        if not bound < 300.0:
            raise ValueError(f"weights {w} could saturate the logistic beyond exp's range (bound {bound:.0f})")


def _matmul(a: Array, w: Array) -> Array:
    """``a @ w`` for a C-contiguous ``a`` of any rank, as one 2-D product.

    numpy leaves BLAS for strided operands and loops over leading axes one small product at a
    time (measured: 100 x 96 @ 96 x 288 took 3.6 ms strided, 0.1 ms contiguous).
    """
    a = np.ascontiguousarray(a)
    out: Array = np.matmul(a.reshape(-1, a.shape[-1]), w).reshape(a.shape[:-1] + (w.shape[-1],))
    return out


class _Gru:
    """Constants of one GRU layer with torch's gate layout (r, z, n) and equations."""

    def __init__(self, p: dict[str, Array], name: str, dtype: type[np.floating]) -> None:
        w_ih, w_hh = p[f"{name}.weight_ih_l0"], p[f"{name}.weight_hh_l0"]
        b_ih, b_hh = p[f"{name}.bias_ih_l0"], p[f"{name}.bias_hh_l0"]
        self.name = name
        self.hidden = h = w_hh.shape[1]

        def make() -> tuple[Any, ...]:
            # b_hh of the r and z gates adds to b_ih; b_hh of n stays inside r * (W_hn h + b_hn).
            bias = b_ih.copy()
            bias[: 2 * h] += b_hh[: 2 * h]
            return (np.ascontiguousarray(w_ih.T, dtype), np.ascontiguousarray(w_hh.T, dtype), bias.astype(dtype),
                    b_hh[2 * h :].astype(dtype), w_ih, w_hh)

        self.dtype = dtype
        self.w_ih_t, self.w_hh_t, self.bias, self.b_hn = _shared((id(w_ih), id(w_hh), np.dtype(dtype).num), make)[:4]

    def run(self, h: Array, x: Array) -> Array:
        """Run over ``x`` ``(hops, rows, in)`` from hidden state ``h`` ``(rows, hidden)``, updated in place.

        Returns the state after each hop, ``(hops, rows, hidden)``.
        """
        hid = self.hidden
        gi = _matmul(x, self.w_ih_t)  # input projections of every hop at once
        gi += self.bias
        rows = h.shape[0]
        out = np.empty(x.shape[:2] + (hid,), self.dtype)
        gh = np.empty((rows, 3 * hid), self.dtype)
        rz = np.empty((rows, 2 * hid), self.dtype)
        n = np.empty((rows, hid), self.dtype)
        prev = h
        for t in range(x.shape[0]):
            np.matmul(prev, self.w_hh_t, out=gh)
            np.add(gi[t, :, : 2 * hid], gh[:, : 2 * hid], out=rz)
            _sigmoid(rz)
            ghn = gh[:, 2 * hid :]
            ghn += self.b_hn
            np.multiply(rz[:, :hid], ghn, out=n)
            n += gi[t, :, 2 * hid :]
            np.tanh(n, out=n)
            # h' = (1 - z) * n + z * h  ==  n + z * (h - n)
            cur = out[t]
            np.subtract(prev, n, out=cur)
            cur *= rz[:, hid:]
            cur += n
            prev = cur
        if x.shape[0]:
            h[...] = out[-1]
        return out


class GainModel:
    """Streaming band-gain network: constants here, the hidden state in a row state.

    ``sample_rate`` and ``frame_len`` fix the bin frequencies (``k * rate / frame_len``);
    ``analysis_window_energy`` is ``sum(analysis_window ** 2)``. ``gain_exponent`` > 1
    makes the model suppress more than it was trained to (1.0 = as trained).
    ``run(state, power)`` processes ``(hops, rows, bins)``; ``step(power)`` is a one-hop
    convenience on a state of ``channels`` rows kept by the object itself.
    """

    def __init__(self, sample_rate: int, frame_len: int, analysis_window_energy: float, channels: int = 1,
                 weights: dict[str, Array] | str | Path | None = None, gain_exponent: float = 1.0,
                 dtype: type[np.floating] = np.float64) -> None:
        p = load_weights(DEFAULT_WEIGHTS if weights is None else weights) if not isinstance(weights, dict) \
            else weights
        _check_bounded(p)
        self.dtype = dtype
        key = np.dtype(dtype).num
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.n_bins = frame_len // 2 + 1
        self.gain_exponent = float(gain_exponent)
        self.n_bands = int(p["centres_hz"].size)
        freqs = np.arange(self.n_bins) * sample_rate / frame_len
        centres = p["centres_hz"]
        psd_scale = REF_RATE_HZ / (analysis_window_energy * sample_rate)

        def band_matrices() -> tuple[Any, ...]:
            w = band_weights(freqs, centres)  # (n_bins, n_bands)
            norm = w.sum(axis=0)
            # band means; bands above Nyquist (8 kHz input) hold no bins and read as silence
            analysis_w = w / np.maximum(norm, 1e-9)  # (n_bins, n_bands)
            if sample_rate > 2 * BAND_TOP_HZ:
                lo, hi = FEATURE_ROLLOFF_HZ
                ramp = 0.5 * (1.0 + np.cos(np.pi * np.clip((freqs - lo) / (hi - lo), 0.0, 1.0)))
                analysis_w *= ramp[:, None]
            # gains back to bins; bins above the top centre
            return analysis_w.astype(dtype), w.T.astype(dtype), freqs > centres[-1], centres

        self._analysis_w, self._synth_w, self._high_bins, _ = _shared((id(centres), sample_rate, frame_len, key),
                                                                      band_matrices)
        self._any_high = bool(np.any(self._high_bins))
        # Features: (log10(max(psd_scale * P @ A, LOG_FLOOR)) - mean) / std, folded into one scale and offset.
        self._log_floor = LOG_FLOOR / psd_scale
        self._feat_scale = (1.0 / p["feat_std"]).astype(dtype)
        self._feat_offset = ((np.log10(psd_scale) - p["feat_mean"]) / p["feat_std"]).astype(dtype)
        self._dense_w_t, self._gain_w_t, self._vad_w_t, self._dense_b, self._gain_b, self._vad_b = _shared(
            (id(p["dense.weight"]), id(p["gain.weight"]), id(p["vad.weight"]), key),
            lambda: (np.ascontiguousarray(p["dense.weight"].T, dtype), np.ascontiguousarray(p["gain.weight"].T, dtype),
                     np.ascontiguousarray(p["vad.weight"].T, dtype), p["dense.bias"].astype(dtype),
                     p["gain.bias"].astype(dtype), p["vad.bias"].astype(dtype),
                     p["dense.weight"], p["gain.weight"], p["vad.weight"]),
        )[:6]
        self._gru1 = _Gru(p, "gru1", dtype)
        self._gru2 = _Gru(p, "gru2", dtype)
        self._dense_n = self._dense_b.size
        # periodicity features (server/dsp/pitch.py, training's --pitch): rho per band and the frame's
        # pitch correlation, through their own dense layer into the first GRU after the others
        self.n_pitch = 0
        self._p_w_t: Array | None = None
        if "dense_p.weight" in p:
            self.n_pitch = int(p["dense_p.weight"].shape[1])
            if self.n_pitch != self.n_bands + 1:
                raise ValueError(f"dense_p reads {self.n_pitch} features; the model has {self.n_bands} bands")
            self._p_w_t, self._p_b = _shared((id(p["dense_p.weight"]), key),
                                             lambda: (np.ascontiguousarray(p["dense_p.weight"].T, dtype),
                                                      p["dense_p.bias"].astype(dtype), p["dense_p.weight"]))[:2]
        self.df_bins = 0
        self.df_taps = 0
        self.lo_bins = 0
        if "df.weight" in p:
            _check_df(p)
            # The network reads lo_bins low bins; the filter may cover fewer (the lowest df_bins),
            # where harmonics are resolved: the head's size says how many.
            self.lo_bins = int(p["lo_mean"].size)
            self.df_taps = int(p["df_taps"]) if "df_taps" in p else int(p["df.weight"].shape[0]) // (2 * self.lo_bins)
            self.df_bins = int(p["df.bias"].size) // (2 * self.df_taps)
            if max(self.lo_bins, self.df_bins) > self.n_bins:
                raise ValueError(f"the deep filter needs {self.lo_bins} bins; this rate and frame have {self.n_bins}")
            self._lo_scale = (1.0 / p["lo_std"]).astype(dtype)
            self._lo_offset = ((np.log10(psd_scale) - p["lo_mean"]) / p["lo_std"]).astype(dtype)
            # The head's outputs come as (bin, tap, re/im); reorder them tap-major, (tap, bin, re/im),
            # so each tap's coefficients are one contiguous complex row for the filter's products.
            k, n = self.df_bins, self.df_taps
            order = np.arange(2 * k * n).reshape(k, n, 2).transpose(1, 0, 2).ravel()
            self._lo_w_t, self._df_w_t, self._lo_b, self._df_b = _shared(
                (id(p["dense_lo.weight"]), id(p["df.weight"]), key),
                lambda: (np.ascontiguousarray(p["dense_lo.weight"].T, dtype),
                         np.ascontiguousarray(p["df.weight"][order].T, dtype),
                         p["dense_lo.bias"].astype(dtype), p["df.bias"][order].astype(dtype),
                         p["dense_lo.weight"], p["df.weight"]),
            )[:4]
            # a low-rank head (training's --df-rank): [GRU2, low dense] -> rank -> taps
            self._df_in_t = _shared((id(p["df_in.weight"]), key),
                                    lambda: (np.ascontiguousarray(p["df_in.weight"].T, dtype), p["df_in.weight"]),
                                    )[0] if "df_in.weight" in p else None
        self._own: RowState = {}
        self.init_state(self._own, self.channels)

    def init_state(self, state: RowState, rows: int) -> None:
        state["model.h1"] = np.zeros((rows, self._gru1.hidden), self.dtype)
        state["model.h2"] = np.zeros((rows, self._gru2.hidden), self.dtype)
        if self.df_taps > 1:  # the low bins of the last df_taps - 1 frames, newest last
            state["model.past_lo"] = np.zeros((rows, self.df_taps - 1, self.df_bins), np.complex128)

    def reset(self) -> None:
        self.init_state(self._own, self.channels)

    def features(self, power: npt.NDArray[np.floating]) -> Array:
        """Normalised log band energies, shape ``power.shape[:-1] + (n_bands,)``."""
        feat = _matmul(np.asarray(power, dtype=self.dtype), self._analysis_w)
        np.maximum(feat, self._log_floor, out=feat)
        np.log10(feat, out=feat)
        feat *= self._feat_scale
        feat += self._feat_offset
        return feat

    @property
    def band_matrix(self) -> Array:
        """The triangular band weights ``(n_bins, n_bands)`` (the periodicity features' bands)."""
        return self._synth_w.T  # type: ignore[no-any-return]

    def run(self, state: RowState, power: Array, pitch: Array | None = None) -> tuple[Array, Array]:
        """``power`` ``(hops, rows, n_bins)`` -> (bin gains, same shape; voice ``(hops, rows)``)."""
        g, v, _ = self.run_full(state, power, pitch)
        return g, v

    def run_full(self, state: RowState, power: Array,
                 pitch: Array | None = None) -> tuple[Array, Array, CArray | None]:
        """As :meth:`run`, plus the deep-filter taps ``(hops, rows, df_bins, df_taps)`` (complex128),
        None for a band-gain model. Tap ``i`` multiplies the spectrum ``i`` frames back. ``pitch``:
        the periodicity features ``(hops, rows, n_pitch)`` of a model that reads them."""
        nd = self._dense_n
        d = _matmul(self.features(power), self._dense_w_t)
        d += self._dense_b
        np.tanh(d, out=d)
        extra = []
        if self._p_w_t is not None:
            if pitch is None:
                raise ValueError("this model reads periodicity features (server/dsp/pitch.py)")
            dp = _matmul(np.asarray(pitch, self.dtype), self._p_w_t)
            dp += self._p_b
            np.tanh(dp, out=dp)
            extra.append(dp)
        dl = None
        if self.df_bins:
            lo = np.asarray(power[..., : self.lo_bins], dtype=self.dtype)
            lo = np.maximum(lo, self._log_floor)
            np.log10(lo, out=lo)
            lo *= self._lo_scale
            lo += self._lo_offset
            dl = _matmul(lo, self._lo_w_t)
            dl += self._lo_b
            np.tanh(dl, out=dl)
            extra.insert(0, dl)
        h1 = self._gru1.run(state["model.h1"], np.concatenate([d, *extra], axis=-1) if extra else d)
        h2 = self._gru2.run(state["model.h2"], h1)
        n1 = h1.shape[-1]
        w = self._gain_w_t  # rows: [dense, gru1, gru2]
        bg = _matmul(d, w[:nd])
        bg += _matmul(h1, w[nd : nd + n1])
        bg += _matmul(h2, w[nd + n1 :])
        bg += self._gain_b
        _sigmoid(bg)
        if self.gain_exponent != 1.0:
            np.power(bg, self.gain_exponent, out=bg)
        vad = _matmul(h1, self._vad_w_t)
        vad += self._vad_b
        _sigmoid(vad)
        g = _matmul(bg, self._synth_w)
        if self._any_high:
            g[..., self._high_bins] = bg[..., -HIGH_BAND_SPAN:].mean(axis=-1, keepdims=True)
        taps = None
        if dl is not None:
            x = np.concatenate([h2, dl], axis=-1)
            c = _matmul(x if self._df_in_t is None else _matmul(x, self._df_in_t), self._df_w_t)
            c += self._df_b
            np.tanh(c, out=c)
            # (hops, rows, taps * bins * 2) real/imaginary pairs -> complex128 (the spectrum's type,
            # so the filter's products need no casts), laid out (hops, rows, taps, bins) and
            # returned as its (hops, rows, bins, taps) view
            taps = c.astype(np.float64).view(np.complex128) \
                .reshape(c.shape[:-1] + (self.df_taps, self.df_bins)).transpose(0, 1, 3, 2)
        return g, vad[..., 0], taps

    def deep_filter(self, state: RowState, spec: CArray, taps: CArray) -> CArray:
        """``sum_i taps[..., i] * spec(t - i)`` on the low bins, ``(hops, rows, df_bins)``; keeps the
        last frames' low bins in ``state`` for the next call (so chunking does not matter)."""
        k, n = self.df_bins, self.df_taps
        lo = spec[..., :k]
        hops = lo.shape[0]
        out: CArray = taps[..., 0] * lo
        if n > 1:
            past = state["model.past_lo"]  # (rows, n - 1, k), newest last
            for i in range(1, n):
                if hops > i:  # frames t - i inside this call
                    out[i:] += taps[i:, :, :, i] * lo[: hops - i]
                for t in range(min(i, hops)):  # frames before this call
                    out[t] += taps[t, :, :, i] * past[:, n - 1 - i + t]
            if hops >= n - 1:
                past[...] = lo[hops - (n - 1):].transpose(1, 0, 2)
            else:  # fewer new frames than the filter remembers: shift them in
                past[:, : n - 1 - hops] = past[:, hops:]
                past[:, n - 1 - hops:] = lo.transpose(1, 0, 2)
        return out

    def step(self, power: npt.NDArray[np.floating]) -> tuple[Array, Array]:
        """One hop on the object's own state: ``power`` (channels, n_bins) -> (gains, voice (channels,))."""
        g, v = self.run(self._own, np.asarray(power, dtype=self.dtype)[None])
        return g[0], v[0]
