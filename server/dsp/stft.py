"""Streaming STFT with an asymmetric low-delay window pair, and a rechunker.

The window pair follows Mauler & Martin, "A low delay, variable resolution, perfect
reconstruction spectral analysis-synthesis system for speech enhancement", EUSIPCO 2007:
a long analysis window (good frequency resolution for the estimators) and a short
synthesis window that only covers the last ``2 * hop`` samples of the frame, so the
algorithmic delay is ``synthesis length - hop = hop`` whatever the analysis length.

Analysis window ``a`` (length N): the rising half of a sqrt-Hann of length ``2 (N - R)``,
then the falling half of a sqrt-Hann of length ``2 R`` (R = hop).
Synthesis window ``s`` (non-zero on the last ``M = 2 R`` samples): ``hann_M / a``, so that
``a * s`` is a periodic Hann of length M, which overlap-adds to exactly 1 at hop R.
With unit gains the output is therefore the input delayed by R samples.

:class:`Stft` holds only constants; the signal state lives in a *row state* (``state.py``: arrays
whose first axis is the row, one row per channel of one or many streams), so the same code
runs one hop of one channel, a second of a file, or one hop of a hundred streams at once.
Spectra are laid out ``(hops, rows, bins)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .state import RowState as RowState  # re-exported: model.py imports it from here

Array = npt.NDArray[np.float64]
CArray = npt.NDArray[np.complex128]


def window_pair(frame_len: int, hop: int) -> tuple[Array, Array]:
    """Return ``(analysis, synthesis)`` windows, both of length ``frame_len``.

    ``synthesis`` is zero outside the last ``2 * hop`` samples and
    ``analysis * synthesis`` there is a periodic Hann of length ``2 * hop``.
    """
    if frame_len < 2 * hop:
        raise ValueError("the analysis frame must cover at least two hops")
    rise_len = frame_len - hop
    n_rise = np.arange(rise_len)
    # Periodic sqrt-Hann of length 2*rise_len, rising half; starts at 0, ends just below 1.
    rise = np.sqrt(0.5 - 0.5 * np.cos(np.pi * (n_rise + 0.5) / rise_len))
    n_fall = np.arange(hop)
    fall = np.sqrt(0.5 + 0.5 * np.cos(np.pi * (n_fall + 0.5) / hop))
    analysis = np.concatenate([rise, fall])

    synth_len = 2 * hop
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(synth_len) / synth_len)
    synthesis = np.zeros(frame_len)
    # The analysis window is strictly positive on its last 2*hop samples (half-sample offsets).
    synthesis[-synth_len:] = hann / analysis[-synth_len:]
    return analysis, synthesis


class Rechunker:
    """Turns chunks of any length into whole hops.

    Samples that do not yet fill a hop wait in an internal buffer.
    """

    def __init__(self, hop: int, channels: int) -> None:
        self.hop = hop
        self._buf = np.zeros((hop, channels))  # partial hop waiting for more input
        self._fill = 0  # valid frames in _buf

    @property
    def pending(self) -> int:
        """Frames waiting in the buffer (always < hop)."""
        return self._fill

    def count(self, n: int) -> int:
        """How many complete hops a chunk of ``n`` frames would release."""
        return (self._fill + n) // self.hop

    def reset(self) -> None:
        self._buf.fill(0.0)
        self._fill = 0

    def take(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
        """Return every whole hop that ``x`` (shape ``(n, channels)``) completes, as ``(hops * hop, channels)``.

        The result may be a view of ``x``; the remainder waits for the next call.
        """
        hop, fill = self.hop, self._fill
        n_hops = (fill + x.shape[0]) // hop
        used = n_hops * hop - fill  # frames of x that go out now (negative: none complete)
        if n_hops == 0:
            self._buf[fill : fill + x.shape[0]] = x
            self._fill += x.shape[0]
            return x[:0]
        head = x[:used] if fill == 0 else np.concatenate([self._buf[:fill], x[:used]])
        rest = x.shape[0] - used
        self._buf[:rest] = x[used:]
        self._fill = rest
        return head


class Stft:
    """Block analysis and overlap-add synthesis for ``frame_len``/``hop``, on a row state.

    ``analyze(state, x)`` takes ``(rows, hops * hop)`` new samples and returns the spectra of
    the ``hops`` frames they complete, ``(hops, rows, n_bins)``, plus each frame's fill
    correction (or None once every row has a full history); ``synthesize(state, spec)``
    returns the ``(rows, hops * hop)`` output samples that became final.
    Output lags input by ``latency`` = ``hop`` samples.
    """

    def __init__(self, frame_len: int, hop: int) -> None:
        self.frame_len = frame_len
        self.hop = hop
        self.n_bins = frame_len // 2 + 1
        self.latency = hop  # synthesis length 2*hop minus one hop already final
        self.analysis, synthesis = window_pair(frame_len, hop)
        self._synth_tail = synthesis[-2 * hop :].copy()  # only the non-zero part is used
        self._analysis_energy_cum = np.cumsum(self.analysis[::-1] ** 2)  # for the fill correction

    def init_state(self, state: RowState, rows: int) -> None:
        state["stft.history"] = np.zeros((rows, self.frame_len - self.hop))  # last input samples
        state["stft.ola"] = np.zeros((rows, self.hop))  # second half of the previous synthesis frame
        state["stft.seen"] = np.zeros(rows, dtype=np.int64)  # input samples seen, saturating at frame_len

    def fill_scale(self, seen: npt.NDArray[np.int64], hops: int) -> Array | None:
        """Power corrections ``(hops, rows)`` for frames whose start is still the zero history.

        Ratio of the full window energy to the energy of the part already holding signal, so a
        periodogram of stationary noise has the right level from the first hop on. None when
        every frame is full.
        """
        if seen.size == 0 or int(seen.min()) >= self.frame_len:
            return None
        filled = np.minimum(seen[None, :] + self.hop * np.arange(1, hops + 1)[:, None], self.frame_len)
        cum = self._analysis_energy_cum
        scale: Array = cum[-1] / cum[filled - 1]
        return scale

    def analyze(self, state: RowState, x: npt.NDArray[np.floating[Any]]) -> tuple[CArray, Array | None]:
        """Spectra ``(hops, rows, n_bins)`` of the frames that ``x`` ``(rows, hops * hop)`` completes."""
        hop, n = self.hop, self.frame_len
        hops = x.shape[1] // hop
        history = state["stft.history"]
        seen = state["stft.seen"]
        scale = self.fill_scale(seen, hops)
        signal = np.concatenate([history, x], axis=1, dtype=np.float64)  # C-contiguous
        # (rows, hops, n) frames as a strided view (sliding_window_view costs ~15 us of checks a call)
        frames = np.ndarray((signal.shape[0], hops, n), np.float64, signal, 0, (signal.strides[0], hop * 8, 8))
        windowed = np.multiply(frames.transpose(1, 0, 2), self.analysis)  # (hops, rows, n), contiguous
        history[...] = signal[:, signal.shape[1] - (n - hop) :]
        np.minimum(seen + hops * hop, n, out=seen)
        spec: CArray = np.fft.rfft(windowed, axis=-1)
        return spec, scale

    def synthesize(self, state: RowState, spec: CArray) -> Array:
        """Overlap-add the modified spectra; return the ``(rows, hops * hop)`` final samples."""
        hop = self.hop
        hops, rows = spec.shape[:2]
        frames = np.fft.irfft(spec, n=self.frame_len, axis=-1)
        tail = frames[:, :, -2 * hop :]
        tail *= self._synth_tail
        out = tail[:, :, :hop].copy()  # (hops, rows, hop)
        out[1:] += tail[:-1, :, hop:]
        ola = state["stft.ola"]
        out[0] += ola
        ola[...] = tail[-1, :, hop:]
        y: Array = out.transpose(1, 0, 2).reshape(rows, hops * hop)
        return y


class StreamingStft:
    """One-hop-at-a-time wrapper of :class:`Stft` for ``channels`` channels (tests, tools).

    ``analyze(hop_block)`` takes ``(hop, channels)`` and returns ``(channels, n_bins)``;
    ``synthesize(spec, out)`` writes ``hop`` final frames to ``out`` ``(hop, channels)``.
    """

    def __init__(self, frame_len: int, hop: int, channels: int) -> None:
        self.core = Stft(frame_len, hop)
        self.frame_len, self.hop, self.channels = frame_len, hop, channels
        self.n_bins, self.latency, self.analysis = self.core.n_bins, self.core.latency, self.core.analysis
        self._state: RowState = {}
        self.core.init_state(self._state, channels)
        self._scale = 1.0

    def reset(self) -> None:
        self.core.init_state(self._state, self.channels)

    @property
    def fill_scale(self) -> float:
        """The power correction of the last analysed frame (1.0 once the history is full)."""
        return self._scale

    def analyze(self, hop_block: npt.NDArray[np.floating]) -> CArray:
        spec, scale = self.core.analyze(self._state, np.ascontiguousarray(hop_block.T, dtype=np.float64))
        self._scale = 1.0 if scale is None else float(scale[0, 0])
        return spec[0]  # type: ignore[no-any-return]

    def synthesize(self, spec: CArray, out: npt.NDArray[np.floating]) -> None:
        out[...] = self.core.synthesize(self._state, spec[None]).T
