"""The streaming denoiser: a state object that ties the STFT, noise tracker and gain rule.

Signal path per hop of 10 ms, all channels at once::

    hop -> analysis (asymmetric window, Mauler & Martin 2007) -> |Y|^2
        -> noise PSD (Gerkmann & Hendriks 2012)
        -> OM-LSA gain (Ephraim & Malah 1985, Cohen & Berdugo 2001)
        -> floor / attenuation limit -> overlap-add synthesis -> hop of output

Why a 10 ms hop with a 32 ms analysis window and a 20 ms synthesis window: the estimators
need the frequency resolution of a ~30 ms window to resolve harmonics of hum and of low
voices, while the asymmetric pair keeps the algorithmic delay at one hop (10 ms) at every
rate. A 10 ms hop is an integer number of samples at all supported rates (441 at 44.1 kHz).
Measured on dev while tuning: a 5 ms hop with a 10 ms synthesis window scored no better
(and is not an integer at 44.1 kHz), and analysis lengths of 20-40 ms were within 0.03 PESQ.

The gain never goes below FLOOR_DB; ``attenuation_limit_db`` can only raise that floor
(6 dB means the gain stays >= -6 dB), and 0 turns the gain off (exact pass-through).

Speed: the per-hop work is split into what can run for many hops and many channels at once
(framing, FFTs, band features, the network's dense layers, the gain formulas, synthesis)
and the few recursions that must go hop by hop (noise tracker, decision-directed SNR, the
two GRU states), each one vectorised over rows. A ``process()`` call with a second of audio
therefore runs the recursions in a tight loop and everything else as a few large numpy
calls; and a :class:`DenoiserPool` runs one hop of many live streams as one batch. Either way
the arithmetic per hop and row is the same, so the output does not depend on how the input
was chunked or batched (up to float rounding in the matrix products, far below one LSB).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from hushwire.contract.limits import MAX_CHANNELS, SUPPORTED_RATES, check_attenuation_limit

from .gain import OmLsaGain
from .model import DEFAULT_WEIGHTS, GainModel, forget_shared, load_weights
from .noise import NoiseTracker
from .pitch import PitchFeatures
from .state import RowState, copy_rows, select
from .stft import Rechunker, Stft

HOP_MS = 10.0  # hop, and algorithmic delay
ANALYSIS_MS = 32.0  # analysis window length
FLOOR_DB = -40.0  # lowest gain; the learned gain keeps the residual from sounding musical down to here
INPUT_ABS_MAX = 1e4  # clamp absurd input so powers stay finite in float64
# Voice activity: mean log likelihood ratio of Sohn, Kim & Sung, "A statistical model-based
# voice activity detector", IEEE SPL 6(1), 1999, over the speech band, through a logistic.
VAD_LOW_HZ = 200.0
VAD_HIGH_HZ = 4000.0
VAD_THRESHOLD = 0.5  # mean log likelihood ratio at which the probability is 0.5
VAD_SLOPE = 6.0  # logistic slope per unit of mean log likelihood ratio
# The learned band gain and the classical per-bin gain are multiplied: the network catches
# transients and babble the statistical model misses, and the per-bin gain adds the spectral
# detail (hum harmonics, narrow tones) that 40 bands cannot resolve. The exponents set how much
# each contributes (tuned on dev; see docs/quality.md). The network is trained to err towards
# keeping speech (training/train.py --under), and 1.2 takes back part of that in noise-dominated
# bands, where the gain is small: dev ΔPESQ +0.666 -> +0.689, ESTOI 0.752 -> 0.754 (real-speech
# pairs ΔPESQ 0.63 -> 0.61; 1.35 gained no PESQ and lost more on real speech).
MODEL_GAIN_EXPONENT = 1.2
DF_GAIN_MATCH = 1.0  # deep-filter weights: scale the filtered part as the exponent scales the gain
CLASSICAL_GAIN_EXPONENT = 0.5

Array = npt.NDArray[np.floating[Any]]
_WEIGHTS_CACHE: dict[str, dict[str, Array]] = {}
# The estimators (noise tracker, gain rule, network) run in float32: on big batches numpy's float32
# log/tanh/divide are 2-7x faster than float64 and the matrix products 2x. The STFT stays float64
# (numpy's float32 FFT measured 4x slower) and so does the signal path.
ESTIMATOR_DTYPE = np.float32
MAX_BLOCK_VALUES = 1 << 16  # rows x hops x bins per batch: bounds the scratch memory of one call (~0.5 MiB an array)
_FLOOR_GAIN = 10.0 ** (FLOOR_DB / 20.0)


def _default_weights() -> dict[str, Array] | None:
    """The shipped weights, loaded once per process; None if they are missing (classical only)."""
    if "default" not in _WEIGHTS_CACHE:
        if not DEFAULT_WEIGHTS.exists():
            return None
        _WEIGHTS_CACHE["default"] = load_weights(DEFAULT_WEIGHTS)
    return _WEIGHTS_CACHE["default"]


def use_weights(weights: dict[str, Array] | None) -> dict[str, Array] | None:
    """Make ``weights`` the model of every denoiser built from now on in this process (None: the
    shipped file again) and return the ones in use before. For the tools that score other weights
    in-process (training/tune.py, train.py's dev checks, tests): the engines built for the old
    weights are dropped, so no later denoiser mixes them up."""
    previous = _WEIGHTS_CACHE.get("default")
    _WEIGHTS_CACHE.clear()
    if weights is not None:
        _WEIGHTS_CACHE["default"] = weights
    _ENGINES.clear()
    forget_shared()   # and what they derived from the old weights, which the cache kept alive
    return previous


class _Engine:
    """The denoiser's constants for one sample rate, and one batch step on a row state."""

    def __init__(self, sample_rate: int, model: bool) -> None:
        self.sample_rate = sample_rate
        self.hop = round(sample_rate * HOP_MS / 1000.0)
        hop_ms = 1000.0 * self.hop / sample_rate
        frame_len = round(sample_rate * ANALYSIS_MS / 1000.0)
        self.stft = Stft(frame_len, self.hop)
        n_bins = self.stft.n_bins
        self.noise = NoiseTracker(n_bins, hop_ms, ESTIMATOR_DTYPE)
        weights = _default_weights() if model else None
        self.model = (GainModel(sample_rate, frame_len, float(np.sum(self.stft.analysis**2)), 1, weights,
                                MODEL_GAIN_EXPONENT, ESTIMATOR_DTYPE) if weights is not None else None)
        self.pitch = (PitchFeatures(sample_rate, self.hop, self.stft.analysis, self.model.band_matrix, ESTIMATOR_DTYPE)
                      if self.model is not None and self.model.n_pitch else None)
        self.gain_rule = OmLsaGain(n_bins, CLASSICAL_GAIN_EXPONENT if self.model is not None else 1.0,
                                   ESTIMATOR_DTYPE)
        freqs = np.arange(n_bins) * sample_rate / frame_len
        self.vad_bins = slice(int(np.searchsorted(freqs, VAD_LOW_HZ)), int(np.searchsorted(freqs, VAD_HIGH_HZ)))
        self.floor = _FLOOR_GAIN
        self.max_hops_per_row = max(1, MAX_BLOCK_VALUES // n_bins)

    def init_state(self, state: RowState, rows: int) -> None:
        self.stft.init_state(state, rows)
        self.noise.init_state(state, rows)
        self.gain_rule.init_state(state, rows)
        if self.model is not None:
            self.model.init_state(state, rows)
        if self.pitch is not None:
            self.pitch.init_state(state, rows)
        state["min_gain"] = np.full(rows, self.floor, ESTIMATOR_DTYPE)  # per row: max(floor, limit); 1.0 = pass-through

    def run(self, state: RowState, x: Array) -> tuple[Array, Array]:
        """Denoise ``x`` ``(rows, hops * hop)``; return the output (same shape) and voice ``(hops, rows)``."""
        spec, scale = self.stft.analyze(state, x)
        power = np.empty(spec.shape, ESTIMATOR_DTYPE)
        np.multiply(spec.real, spec.real, out=power)
        power += spec.imag * spec.imag
        if scale is not None:
            power *= scale[..., None]
        noise_psd = self.noise.run(state, power)
        gain, xi, gamma = self.gain_rule.run(state, power, noise_psd)
        taps = None
        if self.model is not None:
            pitch = self.pitch.run(state, x, spec) if self.pitch is not None else None
            model_gain, voice, taps = self.model.run_full(state, power, pitch)
            if taps is not None:  # the low bins' filtered part takes the classical gain too
                filtered = self.model.deep_filter(state, spec, taps)
                k = filtered.shape[-1]
                filtered *= gain[..., :k]
                if DF_GAIN_MATCH and MODEL_GAIN_EXPONENT != 1.0:
                    # the network was trained on g*Y + filter; the denoiser raises g to the exponent,
                    # so the filter takes the same extra factor g^(e-1) and the two keep their balance
                    filtered *= model_gain[..., :k] ** ((MODEL_GAIN_EXPONENT - 1.0) / MODEL_GAIN_EXPONENT)
            gain *= model_gain
        else:
            voice = self._vad(xi, gamma)
        min_gain = state["min_gain"]
        if taps is not None:
            k = filtered.shape[-1]
            low = spec[..., :k] * gain[..., :k]
            low += filtered
            self._limit(spec[..., :k], low, min_gain)
        np.maximum(gain, min_gain[:, None], out=gain)  # ufuncs: np.clip's Python wrapper costs more
        np.minimum(gain, 1.0, out=gain)
        spec *= gain
        if taps is not None:
            spec[..., :k] = low
        return self.stft.synthesize(state, spec), voice

    @staticmethod
    def _limit(spec: npt.NDArray[np.complexfloating[Any, Any]], out: npt.NDArray[np.complexfloating[Any, Any]],
               min_gain: Array) -> None:
        """Hold the filtered bins' magnitude within [min_gain, 1] x the input's, as the gain is (in
        place): the floor and the attenuation limit apply to the deep filter too, and a bypassed
        row (min_gain 1) gets the input exactly."""
        p_in = np.empty(spec.shape, ESTIMATOR_DTYPE)
        np.multiply(spec.real, spec.real, out=p_in)
        p_in += spec.imag * spec.imag
        p_out = np.empty(out.shape, ESTIMATOR_DTYPE)
        np.multiply(out.real, out.real, out=p_out)
        p_out += out.imag * out.imag
        lo = (min_gain * min_gain)[:, None]
        low = p_out < p_in * lo
        high = p_out > p_in
        if low.any() or high.any():
            # target ratio / current ratio as an amplitude scale; 0/0 (silence) leaves out at 0
            target = np.where(low, p_in * lo, p_in)
            scale = np.sqrt(np.divide(target, p_out, out=np.ones_like(p_out), where=(low | high) & (p_out > 0.0)))
            out *= scale
            zero = low & (p_out <= 0.0)  # an output of exactly 0 where the input is not: the floor
            if zero.any():
                out[...] = np.where(zero, spec * min_gain[None, :, None], out)
        bypass = min_gain >= 1.0
        if bypass.any():
            out[:, bypass] = spec[:, bypass]

    def _vad(self, xi: Array, gamma: Array) -> Array:
        """Speech probability per hop and row from the mean log likelihood ratio (Sohn et al. 1999)."""
        xi = xi[..., self.vad_bins]
        llr = gamma[..., self.vad_bins] * xi / (1.0 + xi) - np.log1p(xi)
        mean_llr = np.clip(llr.mean(axis=-1), -50.0, 50.0)
        prob: Array = 1.0 / (1.0 + np.exp(-VAD_SLOPE * (mean_llr - VAD_THRESHOLD)))
        return prob


_ENGINES: dict[tuple[int, bool], _Engine] = {}


def _engine(sample_rate: int, model: bool) -> _Engine:
    key = (int(sample_rate), model and _default_weights() is not None)
    if key not in _ENGINES:
        _ENGINES[key] = _Engine(*key)
    return _ENGINES[key]


class Slot:
    """A stream's handle on ``channels`` rows of a :class:`DenoiserPool`, from :meth:`DenoiserPool.open`.

    Besides the rows it holds what the pool keeps per stream between calls: the partial hop that
    waits for more input, the frame counts and the last voice probability. Read it freely; only its
    pool changes it.
    """

    __slots__ = ("pool", "start", "stop", "channels", "rechunker", "frames_in", "frames_out", "voice_probability",
                 "closed")

    def __init__(self, pool: DenoiserPool, start: int, channels: int, hop: int) -> None:
        self.pool = pool
        self.start = start  # rows start:stop of the pool's state
        self.stop = start + channels
        self.channels = channels
        self.rechunker = Rechunker(hop, channels)  # input that does not fill a hop yet
        self.frames_in = 0  # frames received since the last reset
        self.frames_out = 0  # frames returned since the last reset
        self.voice_probability = 0.0  # mean over the hops of the last call that completed one
        self.closed = False

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)


class DenoiserPool:
    """The signal state of many streams at one sample rate, processed together.

    The pool owns one :data:`~server.dsp.state.RowState` for all its streams and hands out
    :class:`Slot` handles on rows of it (:meth:`open`, :meth:`close`); the arrays are allocated
    ahead, growing by doubling, and closed rows are reused. :meth:`process_many` runs the hops of
    several streams' chunks as one batch: one numpy call per operation for all of them, instead of
    one per stream. A pool is not thread-safe; use it from one thread (the server's event loop).
    """

    def __init__(self, sample_rate: int, model: bool = True) -> None:
        if sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"unsupported sample rate {sample_rate}; supported: {SUPPORTED_RATES}")
        self.sample_rate = int(sample_rate)
        self._engine = _engine(sample_rate, model)
        self.hop = self._engine.hop
        self.latency_samples = self._engine.stft.latency  # output frame i + latency belongs to input i
        self._state: RowState = {}
        self._engine.init_state(self._state, 0)
        self._used = np.zeros(0, dtype=bool)

    @property
    def model(self) -> GainModel | None:
        """The learned gain model the pool runs (None: the classical estimators alone)."""
        return self._engine.model

    @property
    def rows_in_use(self) -> int:
        return int(self._used.sum())

    # -- slots ------------------------------------------------------------------------------

    def open(self, channels: int) -> Slot:
        """A slot of ``channels`` rows in their initial state, gain floor at ``FLOOR_DB``."""
        return Slot(self, self._allocate(channels), channels, self.hop)

    def close(self, slot: Slot) -> None:
        """Give the slot's rows back (reset, for the next stream); closing twice does nothing."""
        self._check(slot)
        if not slot.closed:
            slot.closed = True
            self._reset_rows(slot.rows)
            self._used[slot.rows] = False

    def reset(self, slot: Slot, voice_probability: float = 0.0) -> None:
        """Clear the slot's signal state and counts in place, and report ``voice_probability`` until
        its next hop; its gain floor (a setting) is kept."""
        self._check_open(slot)
        min_gain = self._state["min_gain"][slot.rows].copy()
        self._reset_rows(slot.rows)
        self._state["min_gain"][slot.rows] = min_gain
        slot.rechunker.reset()
        slot.voice_probability = voice_probability
        slot.frames_in = slot.frames_out = 0

    def set_min_gain(self, slot: Slot, min_gain: float) -> None:
        """The slot's lowest gain from the next hop on: ``max(floor, limit)``, 1.0 for pass-through."""
        self._check_open(slot)
        self._state["min_gain"][slot.rows] = min_gain

    def _check(self, slot: Slot) -> None:
        if slot.pool is not self:
            raise ValueError("the denoiser belongs to another pool")

    def _check_open(self, slot: Slot) -> None:
        """A closed slot's rows may be another stream's by now: writing them would change that stream."""
        self._check(slot)
        if slot.closed:
            raise ValueError("the denoiser is closed")

    def _allocate(self, rows: int) -> int:
        """First row of a free run of ``rows`` rows (the arrays grow by doubling)."""
        free = ~self._used
        if free.size >= rows:
            runs = np.lib.stride_tricks.sliding_window_view(free, rows).all(axis=1)
            hits = np.flatnonzero(runs)
            if hits.size:
                start = int(hits[0])
                self._used[start : start + rows] = True
                return start
        in_use = np.flatnonzero(self._used)
        start = int(in_use[-1]) + 1 if in_use.size else 0  # free rows at the end are reused
        need = start + rows
        capacity = max(need, 2 * self._used.size, 8)
        grown: RowState = {}
        self._engine.init_state(grown, capacity)
        copy_rows(grown, slice(0, self._used.size), self._state)
        self._state = grown
        used = np.zeros(capacity, dtype=bool)
        used[: self._used.size] = self._used
        used[start:need] = True
        self._used = used
        return start

    def _reset_rows(self, rows: slice) -> None:
        fresh: RowState = {}
        self._engine.init_state(fresh, rows.stop - rows.start)
        copy_rows(self._state, rows, fresh)

    # -- processing -------------------------------------------------------------------------

    def process_many(self, items: Sequence[tuple[Denoiser, npt.ArrayLike]]) -> list[npt.NDArray[np.float32]]:
        """Process one chunk for each ``(denoiser, x)`` (distinct denoisers of this pool) as one batch.

        Returns each denoiser's output, exactly what ``denoiser.process(x)`` would have returned.
        """
        engine = self._engine
        hop = engine.hop
        slots = [den.slot for den, _ in items]
        taken = []
        with np.errstate(invalid="ignore"):  # signalling NaNs in raw float32 bytes warn on the cast
            for slot, (_, x) in zip(slots, items, strict=True):
                self._check(slot)
                frames = _frames(slot, x)
                slot.frames_in += frames.shape[0]
                taken.append(slot.rechunker.take(frames))
        groups: dict[int, list[int]] = {}
        for i, block in enumerate(taken):
            groups.setdefault(block.shape[0] // hop, []).append(i)
        results: list[npt.NDArray[np.float32]] = [np.empty((0, slot.channels), np.float32) for slot in slots]
        for n_hops, members in groups.items():
            if n_hops == 0:
                for i in members:
                    results[i] = _finish(slots[i], np.empty((slots[i].channels, 0), np.float32), None)
                continue
            members.sort(key=lambda i: slots[i].start)
            group = [slots[i] for i in members]
            first, last = group[0].start, group[-1].stop
            contiguous = last - first == sum(s.channels for s in group)
            rows: slice | npt.NDArray[np.intp] = slice(first, last)
            n_rows = last - first
            if not contiguous:
                rows = np.concatenate([np.arange(s.start, s.stop) for s in group])
                n_rows = rows.size
            max_hops = max(1, engine.max_hops_per_row // n_rows)
            with np.errstate(invalid="ignore"):
                x_all = _sanitize(np.concatenate([taken[i].T for i in members], dtype=np.float64))
            y_all = np.empty(x_all.shape)
            v_all = np.empty((n_hops, x_all.shape[0]), ESTIMATOR_DTYPE)
            state = select(self._state, rows)  # views of contiguous rows, else copies written back below
            for h0 in range(0, n_hops, max_hops):
                h1 = min(n_hops, h0 + max_hops)
                y_all[:, h0 * hop : h1 * hop], v_all[h0:h1] = engine.run(
                    state, np.ascontiguousarray(x_all[:, h0 * hop : h1 * hop]))
            if not contiguous:
                copy_rows(self._state, rows, state)
            y32 = y_all.astype(np.float32)
            np.minimum(y32, 1.0, out=y32)
            np.maximum(y32, -1.0, out=y32)
            if not math.isfinite(float(y32.sum())):  # cannot happen with finite input; a last guard
                np.nan_to_num(y32, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            voice = np.add.reduce(v_all, axis=0) / n_hops  # per row, over the hops
            row = 0
            for i, slot in zip(members, group, strict=True):
                c = slot.channels
                results[i] = _finish(slot, y32[row : row + c], voice[row : row + c])
                row += c
        return results


def _frames(slot: Slot, x: npt.ArrayLike) -> npt.NDArray[np.floating]:
    """``x`` as ``(n, channels)`` float frames (not copied; the pool sanitises the values)."""
    if slot.closed:
        raise ValueError("the denoiser is closed")
    arr = np.asarray(x)
    if arr.ndim == 1 and slot.channels == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != slot.channels:
        raise ValueError(f"expected shape (n, {slot.channels}), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        # Integer PCM would need a scale this object cannot guess (int16? int32?).
        raise ValueError(f"expected float samples in [-1, 1], got dtype {arr.dtype}")
    return arr


def _finish(slot: Slot, y: npt.NDArray[np.float32], voice: npt.NDArray[np.float64] | None) -> npt.NDArray[np.float32]:
    """The batch's ``(channels, n)`` output as the caller's ``(n, channels)``; the voice of its rows."""
    out = np.ascontiguousarray(y.T)
    if voice is not None and voice.size:
        slot.voice_probability = float(voice[0]) if voice.size == 1 else float(voice.mean())
    slot.frames_out += out.shape[0]
    return out


def _sanitize(x: Array) -> Array:
    """NaN and inf to 0, then clamp to +-INPUT_ABS_MAX so powers stay finite in float64 (in place)."""
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf in the sum, or a signalling NaN
        finite = math.isfinite(float(x.sum()))  # one pass: any NaN or inf makes the sum non-finite
    if not finite:
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    np.minimum(x, INPUT_ABS_MAX, out=x)
    np.maximum(x, -INPUT_ABS_MAX, out=x)
    return x


class Denoiser:
    """Frame-based streaming speech denoiser for 1..8 independent channels.

    ``process(x)`` takes any number of frames and returns the output frames that became
    final; the output lags the input by ``latency_samples``, and ``flush()`` returns the
    tail so that the total output length is the total input length plus the latency.
    The concatenated output does not depend on how the input was chunked.

    ``pool``: a :class:`DenoiserPool` of the same rate to keep the state in, so that
    ``pool.process_many`` can batch this stream with others; call :meth:`close` when done.
    Without one the denoiser has a pool of its own. The denoiser holds its settings and a
    :class:`Slot` of the pool; everything else is the pool's.
    """

    def __init__(self, sample_rate: int, channels: int = 1, attenuation_limit_db: float | None = None,
                 model: bool = True, pool: DenoiserPool | None = None) -> None:
        if sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"unsupported sample rate {sample_rate}; supported: {SUPPORTED_RATES}")
        if not isinstance(channels, int | np.integer) or not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be 1..{MAX_CHANNELS}, got {channels!r}")
        if pool is None:
            pool = DenoiserPool(sample_rate, model)
        elif pool.sample_rate != sample_rate:
            raise ValueError(f"the pool runs at {pool.sample_rate} Hz, not {sample_rate} Hz")
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self._pool = pool
        self._slot = pool.open(self.channels)
        self._min_gain = _FLOOR_GAIN  # max(floor, attenuation limit), 1.0 = pass-through
        self._limit_db: float | None = None
        self._bypass = False
        self.attenuation_limit_db = attenuation_limit_db

    @property
    def pool(self) -> DenoiserPool:
        """The pool that holds this denoiser's state."""
        return self._pool

    @property
    def slot(self) -> Slot:
        """This denoiser's handle on its pool's rows."""
        return self._slot

    # -- settings ---------------------------------------------------------------------

    @property
    def latency_samples(self) -> int:
        """Algorithmic delay in samples: output frame ``i + latency_samples`` belongs to input ``i``."""
        return self._pool.latency_samples

    @property
    def attenuation_limit_db(self) -> float | None:
        """Maximum attenuation in dB (None: the denoiser's own floor; 0: pass-through)."""
        return self._limit_db

    @attenuation_limit_db.setter
    def attenuation_limit_db(self, value: float | None) -> None:
        if value is None:
            self._limit_db = None
            self._min_gain = _FLOOR_GAIN
        else:
            value = check_attenuation_limit(value)  # ValueError unless finite and >= 0
            self._limit_db = value
            self._min_gain = max(_FLOOR_GAIN, 10.0 ** (-value / 20.0))
        self._apply_settings()

    @property
    def bypass(self) -> bool:
        """When true the output is the input delayed by ``latency_samples`` (estimators keep running)."""
        return self._bypass

    @bypass.setter
    def bypass(self, value: bool) -> None:
        self._bypass = bool(value)
        self._apply_settings()

    def _apply_settings(self) -> None:
        self._pool.set_min_gain(self._slot, 1.0 if self._bypass else self._min_gain)

    @property
    def voice_probability(self) -> float:
        """Speech probability (0..1) for the audio of the most recent ``process()`` call.

        A call that completes no hop keeps the previous value.
        """
        return self._slot.voice_probability

    # -- streaming --------------------------------------------------------------------

    def reset(self) -> None:
        """Clear the signal state in place; settings (limit, bypass) are kept."""
        self._pool.reset(self._slot)

    def close(self) -> None:
        """Give the rows back to the pool (the denoiser cannot be used afterwards)."""
        self._pool.close(self._slot)

    def process(self, x: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Feed frames ``x`` of shape ``(n, channels)`` (1-D allowed for mono); return the final ones.

        Exactly the hops completed by this call are returned, as float32 in [-1, 1].
        """
        return self._pool.process_many([(self, x)])[0]

    def flush(self) -> npt.NDArray[np.float32]:
        """Return the tail and reset the stream state (settings are kept).

        The input is completed with silence, so the total output length equals the total
        input length plus ``latency_samples``.
        """
        slot, hop = self._slot, self._pool.hop
        pending = slot.rechunker.pending
        missing = slot.frames_in + self.latency_samples - slot.frames_out  # == pending + latency
        n_hops = -(-missing // hop)
        voice = slot.voice_probability
        tail = self.process(np.zeros((n_hops * hop - pending, self.channels)))[:missing]
        self._pool.reset(slot, voice)  # the tail's silence is not the stream's voice
        return tail


def enhance(x: npt.ArrayLike, sr: int) -> npt.NDArray[np.float32]:
    """Denoise a whole signal: 1-D mono or ``(n, channels)``; same shape, delay removed."""
    arr = np.asarray(x)
    mono = arr.ndim == 1
    frames = arr[:, None] if mono else arr
    den = Denoiser(sr, channels=frames.shape[1])
    lat = den.latency_samples
    y = np.concatenate([den.process(frames), den.flush()])[lat : lat + frames.shape[0]]
    return y[:, 0] if mono else y
