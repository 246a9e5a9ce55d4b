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
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from .gain import OmLsaGain
from .model import DEFAULT_WEIGHTS, GainModel, load_weights
from .noise import NoiseTracker
from .stft import Rechunker, StreamingStft

SUPPORTED_RATES = (8000, 16000, 24000, 32000, 44100, 48000)
MAX_CHANNELS = 8
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
CLASSICAL_GAIN_EXPONENT = 0.5

_WEIGHTS_CACHE: dict[str, dict[str, npt.NDArray[np.float64]]] = {}


def _default_weights() -> dict[str, npt.NDArray[np.float64]] | None:
    """The shipped weights, loaded once per process; None if they are missing (classical only)."""
    if "default" not in _WEIGHTS_CACHE:
        if not DEFAULT_WEIGHTS.exists():
            return None
        _WEIGHTS_CACHE["default"] = load_weights(DEFAULT_WEIGHTS)
    return _WEIGHTS_CACHE["default"]


class Denoiser:
    """Frame-based streaming speech denoiser for 1..8 independent channels.

    ``process(x)`` takes any number of frames and returns the output frames that became
    final; the output lags the input by ``latency_samples``, and ``flush()`` returns the
    tail so that the total output length is the total input length plus the latency.
    The concatenated output does not depend on how the input was chunked.
    """

    def __init__(self, sample_rate: int, channels: int = 1, attenuation_limit_db: float | None = None,
                 model: bool = True) -> None:
        if sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"unsupported sample rate {sample_rate}; supported: {SUPPORTED_RATES}")
        if not isinstance(channels, int | np.integer) or not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be 1..{MAX_CHANNELS}, got {channels!r}")
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        hop = round(sample_rate * HOP_MS / 1000.0)
        hop_ms = 1000.0 * hop / sample_rate
        frame_len = round(sample_rate * ANALYSIS_MS / 1000.0)
        self._stft = StreamingStft(frame_len, hop, self.channels)
        n_bins = self._stft.n_bins
        self._rechunker = Rechunker(hop, self.channels)
        self._noise = NoiseTracker(self.channels, n_bins, hop_ms)
        self._gain_rule = OmLsaGain(self.channels, n_bins)
        weights = _default_weights() if model else None
        self._model = (GainModel(sample_rate, frame_len, float(np.sum(self._stft.analysis**2)), self.channels,
                                 weights, MODEL_GAIN_EXPONENT) if weights is not None else None)
        self._power = np.zeros((self.channels, n_bins))  # |Y|^2 of the current frame
        self._power_imag = np.zeros((self.channels, n_bins))  # scratch for |Im Y|^2
        self._gain = np.ones((self.channels, n_bins))  # gain applied to the current frame
        self._llr = np.zeros((self.channels, n_bins))  # VAD log likelihood ratios
        freqs = np.arange(n_bins) * sample_rate / frame_len
        self._vad_bins = slice(int(np.searchsorted(freqs, VAD_LOW_HZ)), int(np.searchsorted(freqs, VAD_HIGH_HZ)))
        self._floor = 10.0 ** (FLOOR_DB / 20.0)
        self._min_gain = self._floor  # max(floor, attenuation limit), 1.0 = pass-through
        self._limit_db: float | None = None
        self.attenuation_limit_db = attenuation_limit_db
        self._bypass = False
        self._frame_vad = 0.0  # voice probability of the last hop
        self._voice_probability = 0.0  # mean over the hops of the last process() call
        self._in_count = 0  # frames received since the last reset
        self._out_count = 0  # frames returned since the last reset

    # -- settings ---------------------------------------------------------------------

    @property
    def latency_samples(self) -> int:
        """Algorithmic delay in samples: output frame ``i + latency_samples`` belongs to input ``i``."""
        return self._stft.latency

    @property
    def attenuation_limit_db(self) -> float | None:
        """Maximum attenuation in dB (None: the denoiser's own floor; 0: pass-through)."""
        return self._limit_db

    @attenuation_limit_db.setter
    def attenuation_limit_db(self, value: float | None) -> None:
        if value is None:
            self._limit_db = None
            self._min_gain = self._floor
            return
        value = float(value)
        if not math.isfinite(value) or value < 0.0:
            raise ValueError(f"attenuation_limit_db must be a finite number >= 0 or None, got {value!r}")
        self._limit_db = value
        self._min_gain = max(self._floor, 10.0 ** (-value / 20.0))

    @property
    def bypass(self) -> bool:
        """When true the output is the input delayed by ``latency_samples`` (estimators keep running)."""
        return self._bypass

    @bypass.setter
    def bypass(self, value: bool) -> None:
        self._bypass = bool(value)

    @property
    def voice_probability(self) -> float:
        """Speech probability (0..1) for the audio of the most recent ``process()`` call.

        A call that completes no hop keeps the previous value.
        """
        return self._voice_probability

    # -- streaming --------------------------------------------------------------------

    def reset(self) -> None:
        """Clear the signal state in place; settings (limit, bypass) are kept."""
        self._stft.reset()
        self._rechunker.reset()
        self._noise.reset()
        self._gain_rule.reset()
        if self._model is not None:
            self._model.reset()
        self._frame_vad = 0.0
        self._voice_probability = 0.0
        self._in_count = 0
        self._out_count = 0

    def process(self, x: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Feed frames ``x`` of shape ``(n, channels)`` (1-D allowed for mono); return the final ones.

        Exactly the hops completed by this call are returned, as float32 in [-1, 1].
        """
        x = self._check(x)
        out = self._run(x)
        self._out_count += out.shape[0]
        return out

    def flush(self) -> npt.NDArray[np.float32]:
        """Return the tail and reset the stream state (settings are kept).

        The input is completed with silence, so the total output length equals the total
        input length plus ``latency_samples``.
        """
        hop = self._rechunker.hop
        pending = self._rechunker.pending
        missing = self._in_count + self.latency_samples - self._out_count  # == pending + latency
        n_hops = -(-missing // hop)
        voice = self._voice_probability
        tail = self._run(np.zeros((n_hops * hop - pending, self.channels)))[:missing]
        self.reset()
        self._voice_probability = voice
        return tail

    # -- internals --------------------------------------------------------------------

    def _check(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        arr = np.asarray(x)
        if arr.ndim == 1 and self.channels == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[1] != self.channels:
            raise ValueError(f"expected shape (n, {self.channels}), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            # Integer PCM would need a scale this object cannot guess (int16? int32?).
            raise ValueError(f"expected float samples in [-1, 1], got dtype {arr.dtype}")
        with np.errstate(invalid="ignore"):  # signalling NaNs from raw bytes warn on the cast
            clean = arr.astype(np.float64)
        if not np.isfinite(clean).all():
            np.nan_to_num(clean, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        np.clip(clean, -INPUT_ABS_MAX, INPUT_ABS_MAX, out=clean)
        return clean

    def _run(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        hop = self._rechunker.hop
        n_hops = self._rechunker.count(x.shape[0])
        self._in_count += x.shape[0]
        out = np.empty((n_hops * hop, self.channels), dtype=np.float32)
        vad_sum = 0.0
        for i, block in enumerate(self._rechunker.split(x)):
            self._step(block, out[i * hop : (i + 1) * hop])
            vad_sum += self._frame_vad
        if n_hops:
            self._voice_probability = vad_sum / n_hops
        if not np.isfinite(out).all():  # cannot happen with finite input; a last guard
            np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        np.clip(out, -1.0, 1.0, out=out)
        return out

    def _step(self, block: npt.NDArray[np.floating], out: npt.NDArray[np.float32]) -> None:
        """One hop: analysis, estimation, gain, synthesis. Allocates only FFT outputs."""
        stft = self._stft
        spec = stft.analyze(block)
        power = self._power
        np.multiply(spec.real, spec.real, out=power)
        np.multiply(spec.imag, spec.imag, out=self._power_imag)
        power += self._power_imag
        scale = stft.fill_scale
        if scale != 1.0:
            power *= scale
        noise_psd = self._noise.update(power)
        gain = self._gain_rule.update(power, noise_psd)
        if self._model is not None:
            model_gain, voice = self._model.step(power)
            if CLASSICAL_GAIN_EXPONENT == 0.5:
                np.sqrt(gain, out=gain)
            elif CLASSICAL_GAIN_EXPONENT != 1.0:
                np.power(gain, CLASSICAL_GAIN_EXPONENT, out=gain)
            gain *= model_gain
            self._frame_vad = float(voice.mean())
        else:
            self._frame_vad = self._vad()
        if self._bypass or self._min_gain >= 1.0:
            self._gain.fill(1.0)
        else:
            np.maximum(gain, self._min_gain, out=self._gain)
        spec *= self._gain
        stft.synthesize(spec, out)

    def _vad(self) -> float:
        """Frame speech probability from the mean log likelihood ratio (Sohn et al. 1999)."""
        xi = self._gain_rule.xi[:, self._vad_bins]
        gamma = self._gain_rule.gamma[:, self._vad_bins]
        llr = self._llr[:, self._vad_bins]
        np.divide(xi, 1.0 + xi, out=llr)
        llr *= gamma
        llr -= np.log1p(xi)
        mean_llr = float(llr.mean())
        return 1.0 / (1.0 + math.exp(-VAD_SLOPE * (min(max(mean_llr, -50.0), 50.0) - VAD_THRESHOLD)))


def enhance(x: npt.ArrayLike, sr: int) -> npt.NDArray[np.float32]:
    """Denoise a whole signal: 1-D mono or ``(n, channels)``; same shape, delay removed."""
    arr = np.asarray(x)
    mono = arr.ndim == 1
    frames = arr[:, None] if mono else arr
    den = Denoiser(sr, channels=frames.shape[1])
    lat = den.latency_samples
    y = np.concatenate([den.process(frames), den.flush()])[lat : lat + frames.shape[0]]
    return y[:, 0] if mono else y
