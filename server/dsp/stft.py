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
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

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
    """Turns chunks of any length into complete hops of exactly ``hop`` frames.

    Samples that do not yet fill a hop wait in an internal buffer. The hops yielded are
    views (into the caller's chunk or the internal buffer) that are only valid until the
    next iteration, so the consumer must use them at once.
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

    def split(self, x: npt.NDArray[np.floating]) -> Iterator[npt.NDArray[np.floating]]:
        """Yield every hop that ``x`` (shape ``(n, channels)``) completes."""
        hop = self.hop
        n = x.shape[0]
        pos = 0
        if self._fill:
            take = min(hop - self._fill, n)
            self._buf[self._fill : self._fill + take] = x[:take]
            self._fill += take
            pos = take
            if self._fill < hop:
                return
            self._fill = 0
            yield self._buf
        while n - pos >= hop:
            yield x[pos : pos + hop]
            pos += hop
        rest = n - pos
        if rest:
            self._buf[:rest] = x[pos:]
            self._fill = rest


class StreamingStft:
    """Frame-by-frame analysis and overlap-add synthesis for ``channels`` channels at once.

    ``analyze(hop)`` shifts one hop into the frame buffer and returns the spectrum,
    shape ``(channels, frame_len // 2 + 1)``; ``synthesize(spec, out)`` writes the ``hop``
    output frames that became final. Output lags input by ``latency`` = ``hop`` samples.
    """

    def __init__(self, frame_len: int, hop: int, channels: int) -> None:
        self.frame_len = frame_len
        self.hop = hop
        self.channels = channels
        self.n_bins = frame_len // 2 + 1
        self.latency = hop  # synthesis length 2*hop minus one hop already final
        self.analysis, synthesis = window_pair(frame_len, hop)
        self._synth_tail = synthesis[-2 * hop :].copy()  # only the non-zero part is used
        self._analysis_energy_cum = np.cumsum(self.analysis[::-1] ** 2)  # for fill_scale
        self._frame = np.zeros((channels, frame_len))  # last frame_len input samples
        self._windowed = np.zeros((channels, frame_len))
        self._spec = np.zeros((channels, self.n_bins), dtype=np.complex128)
        self._ola = np.zeros((channels, 2 * hop))  # overlap-add accumulator
        self._seen = 0  # input frames seen, saturating at frame_len

    def reset(self) -> None:
        self._frame.fill(0.0)
        self._ola.fill(0.0)
        self._seen = 0

    @property
    def fill_scale(self) -> float:
        """Power correction for the first frames, whose start is still the zero history.

        Ratio of the full window energy to the energy of the part already holding signal,
        so a periodogram of stationary noise has the right level from the first hop on.
        """
        seen = max(self._seen, 1)
        return float(self._analysis_energy_cum[-1] / self._analysis_energy_cum[seen - 1])

    def analyze(self, hop_block: npt.NDArray[np.floating]) -> CArray:
        """Push ``hop_block`` (shape ``(hop, channels)``) and return the frame's spectrum."""
        hop = self.hop
        frame = self._frame
        frame[:, :-hop] = frame[:, hop:]
        frame[:, -hop:] = hop_block.T
        self._seen = min(self._seen + hop, self.frame_len)
        np.multiply(frame, self.analysis, out=self._windowed)
        np.fft.rfft(self._windowed, axis=-1, out=self._spec)
        return self._spec

    def synthesize(self, spec: CArray, out: npt.NDArray[np.floating]) -> None:
        """Overlap-add the modified ``spec`` and write ``hop`` final frames to ``out`` (hop, channels)."""
        hop = self.hop
        frame = self._windowed  # free again after analyze(); reused to avoid an allocation
        np.fft.irfft(spec, n=self.frame_len, axis=-1, out=frame)
        tail = frame[:, -2 * hop :]
        tail *= self._synth_tail
        ola = self._ola
        ola += tail
        out[...] = ola[:, :hop].T
        ola[:, :hop] = ola[:, hop:]
        ola[:, hop:] = 0.0
