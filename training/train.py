"""Train the band-gain network and export ``server/dsp/weights/gain_model.npz``.

    OMP_NUM_THREADS=1 .venv/bin/python training/train.py --minutes 50 [--seed 1]

Mixes ``training/data`` (from ``make_data.py``) on the fly: speech at -7..22 dB
active-speech SNR over one or two noise types, clean-only and noise-only
segments, random level, random microphone colouration (tilt, resonances,
high- and low-pass, sometimes an 8 kHz-rate band limit). Features and targets
come from the same asymmetric-window STFT as ``server/dsp`` (``window_pair``,
32 ms analysis, 10 ms hop at 16 kHz).

Every ``--eval-every`` minutes a checkpoint is exported to
``training/checkpoints/`` and, with ``--dev DIR`` (an external dev corpus, say; see
``devscore.py``), scored on its 16 kHz pairs (the model
alone via ``eval_model.enhance``, or with ``--dev-mode denoiser`` the full
streaming denoiser); the best one by ΔPESQ + W ΔESTOI (``--estoi-weight``) is
copied to ``server/dsp/weights/gain_model.npz`` if it beats ``--best``. Dev is
only scored, never trained on. ``--under``, ``--combined`` and ``--noise-weights``
change the loss and the noise mix (see ``losses`` and README.md). Uses one core.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from devscore import add_dev_argument  # noqa: E402

from server.dsp.model import LOG_FLOOR, REF_RATE_HZ, band_centres_hz, band_weights  # noqa: E402
from server.dsp.pitch import PitchFeatures  # noqa: E402
from server.dsp.stft import window_pair  # noqa: E402

SR = 16000
HOP = 160  # 10 ms
FRAME_LEN = 512  # 32 ms, as server/dsp/denoiser.py (ANALYSIS_MS)
N_BINS = FRAME_LEN // 2 + 1
SEG_S = 3.0
DF_BINS = 128  # deep-filtered bins: 0 - 3.97 kHz at 31.25 Hz (every rate: the analysis window is 32 ms)
DF_TAPS = 2  # the current frame and the one before (causal: no added delay)
LO_DENSE = 48
PITCH_DENSE = 32  # the periodicity features' dense layer (--pitch), into the first GRU
WEIGHTS_OUT = ROOT / "server" / "dsp" / "weights" / "gain_model.npz"
CKPT_DIR = Path(__file__).resolve().parent / "checkpoints"
DATA_DIR = Path(__file__).resolve().parent / "data"
REVERB_P = 0.3  # share of examples heard in a synthetic room (when the data has rir.npy)
TELEPHONE_P = 0.15  # share of examples band-limited like an 8 kHz stream


# ----------------------------------------------------------------------------- model

class GainNet(nn.Module):
    """Dense -> GRU -> GRU; band gains from all three layers, voice probability from the first GRU.

    With ``df_bins`` > 0 (the deep-filter model, issue #15) the network also sees the log power
    of the lowest ``df_bins`` STFT bins (0-4 kHz at 31.25 Hz: the resolved harmonics), through
    a second dense layer whose output joins the first GRU's input, and it outputs ``df_taps``
    complex filter taps per low bin from [GRU2, low dense] (tanh, so each part is in [-1, 1]).
    The low bins of the output are then ``gain * Y(t) + sum_i c_i * Y(t - i)`` (a residual deep
    filter in the spirit of Schroeter et al., DeepFilterNet, ICASSP 2022: causal taps over the
    current and past frames, so no delay is added). Zero filter weights give the band-gain model.
    """

    def __init__(self, n_bands: int = 40, dense: int = 96, hidden: int = 96, df_bins: int = 0,
                 df_taps: int = DF_TAPS, lo_dense: int = LO_DENSE, df_rank: int = 0, pitch: bool = False) -> None:
        super().__init__()
        self.df_bins, self.df_taps, self.df_rank = df_bins, df_taps, df_rank
        self.n_pitch = n_bands + 1 if pitch else 0  # server/dsp/pitch.py: rho per band + the frame's
        self.dense = nn.Linear(n_bands, dense)
        gru_in = dense
        if df_bins:
            self.dense_lo = nn.Linear(df_bins, lo_dense)
            gru_in += lo_dense
        if pitch:
            self.dense_p = nn.Linear(self.n_pitch, PITCH_DENSE)
            gru_in += PITCH_DENSE
        self.gru1 = nn.GRU(gru_in, hidden, batch_first=True)
        self.gru2 = nn.GRU(hidden, hidden, batch_first=True)
        self.gain = nn.Linear(dense + 2 * hidden, n_bands)
        self.vad = nn.Linear(hidden, 1)
        self.register_buffer("feat_mean", torch.zeros(n_bands))
        self.register_buffer("feat_std", torch.ones(n_bands))
        if df_bins:
            head_in = hidden + lo_dense
            if df_rank:  # a low-rank head: [GRU2, low dense] -> rank -> taps (cost: issue #15's budget)
                self.df_in = nn.Linear(head_in, df_rank, bias=False)
                head_in = df_rank
            self.df = nn.Linear(head_in, df_bins * df_taps * 2)
            nn.init.zeros_(self.df.weight)
            nn.init.zeros_(self.df.bias)
            self.register_buffer("lo_mean", torch.zeros(df_bins))
            self.register_buffer("lo_std", torch.ones(df_bins))

    @staticmethod
    def from_state(state: dict) -> GainNet:
        """An empty model of the architecture a state dict (or .npz dict) describes."""
        pitch = "dense_p.weight" in state
        if "df.weight" not in state:
            return GainNet(pitch=pitch)
        df_bins = int(state["lo_mean"].shape[0])
        return GainNet(df_bins=df_bins, df_taps=int(state["df.weight"].shape[0]) // (2 * df_bins),
                       lo_dense=int(state["dense_lo.weight"].shape[0]),
                       df_rank=int(state["df_in.weight"].shape[0]) if "df_in.weight" in state else 0, pitch=pitch)

    def forward(self, logband: torch.Tensor, loglo: torch.Tensor | None = None, pitch: torch.Tensor | None = None):
        """-> band gains (B, T, bands), voice (B, T) and, with ``df_bins``, taps (B, T, bins, taps, 2)."""
        x = (logband - self.feat_mean) / self.feat_std
        d = torch.tanh(self.dense(x))
        gru_in = [d]
        if self.df_bins:
            assert loglo is not None
            dl = torch.tanh(self.dense_lo((loglo - self.lo_mean) / self.lo_std))
            gru_in.append(dl)
        if self.n_pitch:
            assert pitch is not None
            gru_in.append(torch.tanh(self.dense_p(pitch)))
        h1, _ = self.gru1(torch.cat(gru_in, dim=-1) if len(gru_in) > 1 else d)
        h2, _ = self.gru2(h1)
        g = torch.sigmoid(self.gain(torch.cat([d, h1, h2], dim=-1)))
        v = torch.sigmoid(self.vad(h1))[..., 0]
        if not self.df_bins:
            return g, v, None
        x = torch.cat([h2, dl], dim=-1)
        c = torch.tanh(self.df(self.df_in(x) if self.df_rank else x))
        return g, v, c.reshape(*c.shape[:-1], self.df_bins, self.df_taps, 2)


def factor_head(model: GainNet, state: dict) -> None:
    """Load a full-rank deep-filter state into a low-rank ``model``: every other tensor is copied and
    the head's weight (out x in) is split by a truncated SVD into ``df_in`` (rank x in) and ``df``
    (out x rank), the best rank-r approximation of what was learned."""
    w = state["df.weight"].double()
    u, s, vt = torch.linalg.svd(w, full_matrices=False)
    r = model.df_rank
    root = s[:r].sqrt()
    rest = {k: v for k, v in state.items() if k != "df.weight"}
    rest["df_in.weight"] = (root[:, None] * vt[:r]).float()
    rest["df.weight"] = (u[:, :r] * root[None, :]).float()
    model.load_state_dict(rest)
    kept = float((s[:r] ** 2).sum() / (s ** 2).sum().clamp(min=1e-30))
    print(f"head factored to rank {r}: {kept:.4f} of its energy kept", flush=True)


def warm_start(model: GainNet, npz: Path) -> list[str]:
    """Copy the weights of a shipped .npz into ``model``; the first GRU's extra inputs (the low
    dense layer) start at zero, so the model starts as exactly the shipped one. Returns the
    names of the tensors that were not in the file (they keep their initialisation)."""
    with np.load(npz) as z:
        src = {k: torch.from_numpy(np.asarray(z[k], dtype=np.float32)) for k in z.files}
    fresh = []
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k not in src:
                fresh.append(k)
                continue
            w = src[k]
            if w.shape == v.shape:
                v.copy_(w)
            elif k == "gru1.weight_ih_l0" and w.shape[0] == v.shape[0] and w.shape[1] < v.shape[1]:
                v.zero_()
                v[:, : w.shape[1]] = w
            else:
                raise ValueError(f"{k}: {tuple(w.shape)} in {npz}, {tuple(v.shape)} in the model")
    return fresh


def export_npz(model: GainNet, path: Path, extra: dict | None = None) -> None:
    arrs = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    if model.df_bins:
        arrs["df_taps"] = np.array(model.df_taps, dtype=np.int32)
    arrs["centres_hz"] = band_centres_hz().astype(np.float32)
    for k, v in (extra or {}).items():
        arrs[k] = np.asarray(v)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrs)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- data

class Mixer:
    """Draws (clean speech, noise) segment pairs from the data built by make_data.py."""

    def __init__(self, data_dir: Path, rng: np.random.Generator, type_weights: dict[str, float] | None = None) -> None:
        self.rng = rng
        self.speech = np.load(data_dir / "speech.npy", mmap_mode="r")
        self.index = np.load(data_dir / "speech_index.npy")
        self.noise = {p.stem[len("noise_"):]: np.load(p) for p in sorted(data_dir.glob("noise_*.npy"))}
        self.noise_types = sorted(self.noise)
        w = np.array([(type_weights or {}).get(t, 1.0) for t in self.noise_types])
        # how often each noise type is drawn; None = uniform (draws as the first recipe did)
        self.type_p = w / w.sum() if type_weights else None
        self.clip = int(json.loads((data_dir / "manifest.json").read_text())["noise_clip_s"] * SR)
        rir = data_dir / "rir.npy"
        self.rir = np.load(rir) if rir.exists() else None
        self.rir_early = np.load(data_dir / "rir_early.npy") if rir.exists() else None
        self.reverb_p = 0.0 if self.rir is None else REVERB_P

    def _reverb(self, x: np.ndarray, k: int, early: bool) -> np.ndarray:
        from scipy.signal import fftconvolve
        assert self.rir is not None and self.rir_early is not None
        h = self.rir_early[k] if early else self.rir[k]
        return fftconvolve(x, h)[: x.size].astype(np.float32)

    def _speech(self, n: int) -> np.ndarray:
        rng = self.rng
        out = np.zeros(n, dtype=np.float32)
        pos = int(rng.integers(0, int(0.8 * SR))) if rng.random() < 0.5 else -int(rng.integers(0, 2 * SR))
        while pos < n:
            s0, ln = self.index[rng.integers(len(self.index))]
            u = np.asarray(self.speech[s0:s0 + ln], dtype=np.float32) * 10 ** (rng.uniform(-6, 6) / 20)
            a, b = max(pos, 0), min(n, pos + ln)
            if b > a:
                out[a:b] = u[a - pos:b - pos]
            pos += ln + int(rng.uniform(0.05, 1.0) * SR)
        return out

    def _noise_one(self, kind: str, n: int) -> np.ndarray:
        bank = self.noise[kind]
        k = len(bank) // self.clip
        c = int(self.rng.integers(k))
        off = int(self.rng.integers(0, self.clip - n + 1))
        return np.asarray(bank[c * self.clip + off: c * self.clip + off + n], dtype=np.float32)

    def _noise_type(self) -> str:
        k = len(self.noise_types)
        i = self.rng.integers(k) if self.type_p is None else self.rng.choice(k, p=self.type_p)
        return self.noise_types[int(i)]

    def _noise(self, n: int) -> np.ndarray:
        rng = self.rng
        x = self._noise_one(self._noise_type(), n)
        if rng.random() < 0.3:  # mixtures such as a cafe: babble + clicks + music
            y = self._noise_one(self._noise_type(), n)
            x = x + y * 10 ** (rng.uniform(-12, 3) / 20)
        if rng.random() < 0.3:  # slowly changing noise level
            ramp = np.linspace(rng.uniform(-6, 6), rng.uniform(-6, 6), n) / 20
            x = x * 10 ** ramp
        return x

    def pair(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Target speech, the speech the microphone hears, and noise, scaled to a random SNR and level.

        In ``reverb_p`` of the examples the speech is heard in a room (an image-method impulse
        response of ``make_data.py``) and the target is its direct path plus early reflections
        (50 ms): those colour the voice but do not smear it, a 10 ms-delay model cannot undo them
        without distortion, and the dev references have none. The late reverberation is what the
        model learns to remove. The noise is then reverberated too (another position) in 60 %.
        """
        rng = self.rng
        r = rng.random()
        s = np.zeros(n, np.float32) if r < 0.08 else self._speech(n)
        noise = np.zeros(n, np.float32) if 0.08 <= r < 0.15 else self._noise(n)
        s_in = s
        if self.rir is not None and rng.random() < self.reverb_p:
            k = int(rng.integers(len(self.rir)))
            s_in, s = self._reverb(s, k, False), self._reverb(s, k, True)
            if rng.random() < 0.6:
                noise = self._reverb(noise, int(rng.integers(len(self.rir))), False)
        fr = s[: n // HOP * HOP].reshape(-1, HOP)
        e = np.mean(fr**2, axis=1)
        active = e > e.max() * 10 ** (-3.5) if e.max() > 0 else np.zeros_like(e, bool)
        p_s = float(e[active].mean()) if active.any() else 0.0
        level_db = rng.uniform(-42, -15)  # active speech level, dBFS
        snr_db = rng.uniform(-7, 22)
        if p_s > 0:
            g_s = 10 ** (level_db / 20) / math.sqrt(p_s)
            s, s_in = s * g_s, s_in * g_s
            p_n = float(np.mean(noise**2))
            if p_n > 0:
                noise = noise * math.sqrt(10 ** ((level_db - snr_db) / 10) / p_n)
        else:  # noise only: any level
            p_n = float(np.mean(noise**2))
            noise = noise * (10 ** (rng.uniform(-55, -15) / 20) / math.sqrt(p_n + 1e-20))
        peak = float(np.max(np.abs(s_in + noise)))
        if peak > 0.99:
            s, s_in, noise = s * 0.99 / peak, s_in * 0.99 / peak, noise * 0.99 / peak
        return s, s_in, noise

    def batch(self, b: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(target speech, heard speech, noise), each (b, n)."""
        ts, hs, ns = zip(*[self.pair(n) for _ in range(b)], strict=True)
        return np.stack(ts).astype(np.float32), np.stack(hs).astype(np.float32), np.stack(ns).astype(np.float32)


class Frontend:
    """Torch version of the streaming STFT analysis + band features of server/dsp."""

    def __init__(self) -> None:
        ana, _ = window_pair(FRAME_LEN, HOP)
        self.window = torch.tensor(ana, dtype=torch.float32)
        cum = np.cumsum(ana[::-1] ** 2)
        # fill correction of the first frames (StreamingStft.fill_scale)
        n_fill = FRAME_LEN // HOP + 1
        self.fill = torch.tensor([cum[-1] / cum[min((t + 1) * HOP, FRAME_LEN) - 1] for t in range(n_fill)],
                                 dtype=torch.float32)
        self.psd_scale = REF_RATE_HZ / (float(np.sum(ana**2)) * SR)
        self.freqs = np.arange(N_BINS) * SR / FRAME_LEN
        w = band_weights(self.freqs, band_centres_hz())
        self.w_synth = torch.tensor(w.T, dtype=torch.float32)  # (bands, bins)
        self.w_ana = torch.tensor(w / w.sum(0), dtype=torch.float32)  # (bins, bands): band means
        self.f = torch.tensor(self.freqs, dtype=torch.float32)
        self.periodicity = PitchFeatures(SR, HOP, ana, w)

    def pitch(self, y: torch.Tensor) -> torch.Tensor:
        """(B, L) time signal -> (B, T, bands + 1) periodicity features, by the server's own code
        (on the signal before the random colouration: a smooth response barely changes them)."""
        state: dict = {}
        self.periodicity.init_state(state, y.shape[0])  # type: ignore[arg-type]
        f = self.periodicity.run(state, y.detach().double().numpy(), None)  # type: ignore[arg-type]
        return torch.from_numpy(np.ascontiguousarray(f.transpose(1, 0, 2)))

    def stft(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, T, bins) complex, frame t ends at sample (t + 1) * HOP."""
        xp = torch.nn.functional.pad(x, (FRAME_LEN - HOP, 0))
        fr = xp.unfold(-1, FRAME_LEN, HOP) * self.window
        return torch.fft.rfft(fr, dim=-1)

    def colouration(self, b: int, rng: np.random.Generator) -> torch.Tensor:
        """Random smooth microphone/room magnitude response per example, (B, 1, bins)."""
        f = np.maximum(self.freqs, 1.0)
        lf = np.log2(f / 1000.0)
        out = np.zeros((b, N_BINS))
        for i in range(b):
            db = rng.uniform(-3, 3) * lf  # tilt, dB per octave
            for _ in range(rng.integers(0, 4)):  # resonances and dips
                db += rng.uniform(-8, 8) * np.exp(-0.5 * ((lf - rng.uniform(-3, 2.9)) / rng.uniform(0.15, 1.0)) ** 2)
            hp = rng.uniform(20, 300)
            db += 10 * np.log10(1 / (1 + (hp / f) ** 4))
            if rng.random() < 0.3:
                lp = rng.uniform(3000, 7800)
                db += 10 * np.log10(1 / (1 + (f / lp) ** rng.choice([4, 8, 16])))
            g = 10 ** (db / 20)
            if rng.random() < TELEPHONE_P:  # an 8 kHz stream: nothing above 4 kHz
                # a resampler's anti-alias roll-off (to -60 dB by 4 kHz) and, in half, a
                # telephone channel's 300-3400 Hz band
                edge = rng.uniform(3300, 3850) if rng.random() < 0.5 else rng.uniform(3600, 3900)
                g *= np.clip(1.0 - (self.freqs - edge) / (4000.0 - edge), 1e-3, 1.0)
                if rng.random() < 0.5:
                    g *= 1 / np.sqrt(1 + (rng.uniform(200, 350) / f) ** 8)
                g[self.freqs >= 4000] = 0.0
            out[i] = g
        return torch.tensor(out[:, None, :], dtype=torch.float32)

    def power(self, spec: torch.Tensor) -> torch.Tensor:
        p = spec.real**2 + spec.imag**2
        n_fill = min(self.fill.numel(), p.shape[1])
        scale = torch.ones(p.shape[1])
        scale[:n_fill] = self.fill[:n_fill]
        return p * scale[None, :, None]

    def logband(self, power: torch.Tensor) -> torch.Tensor:
        e = (power @ self.w_ana) * self.psd_scale
        return torch.log10(torch.clamp(e, min=LOG_FLOOR))

    def loglo(self, power: torch.Tensor, bins: int) -> torch.Tensor:
        """Log PSD of the lowest ``bins`` bins (the deep filter's input), scaled as the bands."""
        return torch.log10(torch.clamp(power[..., :bins] * self.psd_scale, min=LOG_FLOOR))


# ----------------------------------------------------------------------------- training

def classical_gain(py: torch.Tensor) -> torch.Tensor:
    """The denoiser's classical per-bin gain, as it multiplies the model's: (B, T, bins), no gradient.

    Runs the server's own noise tracker and OM-LSA rule causally over the frames of every
    example at once (they are vectorised over channels), raised to the denoiser's
    ``CLASSICAL_GAIN_EXPONENT``: about 60 ms for a batch of 32 x 3 s.
    """
    from server.dsp.denoiser import CLASSICAL_GAIN_EXPONENT
    from server.dsp.gain import OmLsaGain
    from server.dsp.noise import NoiseTracker

    p = py.detach().double().numpy()
    b, t, k = p.shape
    tracker = NoiseTracker(k, 1000.0 * HOP / SR)
    rule = OmLsaGain(k, CLASSICAL_GAIN_EXPONENT)
    state: dict = {}  # one row per example
    tracker.init_state(state, b)
    rule.init_state(state, b)
    frames = np.ascontiguousarray(p.transpose(1, 0, 2))  # (hops, rows, bins), as the denoiser lays them out
    gain, _, _ = rule.run(state, frames, tracker.run(state, frames))
    return torch.from_numpy(np.ascontiguousarray(gain.transpose(1, 0, 2))).float()


def deep_filter(spec_lo: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
    """``sum_i c_i(t) * Y(t - i)`` per bin: spec_lo (B, T, K) complex, coefs (B, T, K, taps, 2)."""
    out = torch.zeros_like(spec_lo)
    for i in range(coefs.shape[-2]):
        y = spec_lo if i == 0 else torch.nn.functional.pad(spec_lo, (0, 0, i, 0))[:, : spec_lo.shape[1]]
        out = out + torch.complex(coefs[..., i, 0], coefs[..., i, 1]) * y
    return out


def losses(fe: Frontend, model: GainNet, s: torch.Tensor, n: torch.Tensor, col: torch.Tensor,
           under: float = 0.0, combined: bool = False, s_in: torch.Tensor | None = None,
           complex_weight: float = 0.0):
    """Gain, spectrum and voice losses. ``under`` > 0 weighs errors that remove speech (gain
    below the ideal, output magnitude below the clean one) by 1 + ``under``: a gain that leaves
    some noise costs intelligibility less than one that cuts speech (the ESTOI/PESQ trade-off).

    ``combined``: the losses apply to the gain the denoiser really uses, the model's gain times
    the classical per-bin gain (``classical_gain``) floored at ``FLOOR_DB``, so the network learns
    to complement the classical rule (suppress what it misses, not suppress twice) rather than
    to be the whole denoiser.

    ``s_in``: the speech as heard (reverberant) when it differs from the target ``s``.
    With a deep-filter model the spectrum losses apply to its output, and ``complex_weight``
    adds a compressed complex term (magnitude^0.3 with the phase) so the filter taps learn phase."""
    S = fe.stft(s) * col
    N = fe.stft(n) * col
    Y = (S if s_in is None else fe.stft(s_in) * col) + N
    py, ps = fe.power(Y), fe.power(S)
    feats = fe.logband(py)
    pf = fe.pitch((s if s_in is None else s_in) + n) if model.n_pitch else None
    g, v, coefs = model(feats, fe.loglo(py, model.df_bins) if model.df_bins else None, pf)
    ey = (py @ fe.w_ana) * fe.psd_scale
    es = (ps @ fe.w_ana) * fe.psd_scale
    target = torch.clamp(torch.sqrt(es / (ey + 1e-14)), 0.0, 1.0)
    valid = (ey > 1e-11).float()  # skip empty bands (band-limited input, digital silence)
    gc = classical_gain(py) if combined else None
    if gc is not None:  # band amplitude gain of the classical rule, energy-weighted within the band
        cb = torch.sqrt(((py * gc**2) @ fe.w_ana) * fe.psd_scale / (ey + 1e-14)).clamp(max=1.0)
        d = torch.sqrt(g * cb + 1e-8) - torch.sqrt(target)
    else:
        d = torch.sqrt(g + 1e-8) - torch.sqrt(target)
    if under:
        valid = valid * (1.0 + under * (d < 0).float())
    gain_loss = ((d**2 + 10 * d**4) * valid).sum() / valid.sum().clamp(min=1)
    gb = g @ fe.w_synth  # (B, T, bins)
    if gc is not None:
        from server.dsp.denoiser import FLOOR_DB
        gb = torch.clamp(gb * gc, min=10 ** (FLOOR_DB / 20))
    lvl = torch.sqrt(py.mean(dim=(1, 2), keepdim=True) + 1e-12)  # per-example level
    mag_s = torch.sqrt(ps + 1e-12) / lvl
    cplx_loss = torch.zeros(())
    if coefs is not None:
        k = model.df_bins
        fill = torch.sqrt(py / (Y.real**2 + Y.imag**2 + 1e-20))  # the fill correction as an amplitude
        yn = Y * fill / lvl
        out = yn * gb
        out = torch.cat([out[..., :k] + deep_filter(yn[..., :k], coefs), out[..., k:]], dim=-1)
        mag_out = torch.sqrt(out.real**2 + out.imag**2 + 1e-12)
        if complex_weight:
            sn = S * fill / lvl
            co = out * (mag_out + 1e-6) ** -0.7
            cs = sn * (mag_s + 1e-6) ** -0.7
            cplx_loss = complex_weight * ((co - cs).abs() ** 2).mean()
        e = (mag_out + 1e-6) ** 0.3 - (mag_s + 1e-6) ** 0.3
    else:
        mag_y = torch.sqrt(py + 1e-12) / lvl
        e = (gb * mag_y + 1e-6) ** 0.3 - (mag_s + 1e-6) ** 0.3
    spec_loss = (e.pow(2) * (1.0 + under * (e < 0).float())).mean() if under else e.pow(2).mean()
    spec_loss = spec_loss + cplx_loss
    es_frame = ps.sum(-1)
    thr = es_frame.amax(dim=1, keepdim=True) * 10 ** (-3.5)
    vad_t = ((es_frame > thr) & (es_frame > 1e-9)).float()
    vad_loss = nn.functional.binary_cross_entropy(v.clamp(1e-6, 1 - 1e-6), vad_t)
    return gain_loss, spec_loss, vad_loss


def dev_score(npz: Path, exponent: float, mode: str = "model", data: Path | None = None) -> tuple[dict, str]:
    """Dev summary of the model alone (``model``) or of the full streaming denoiser (``denoiser``),
    on the ``--dev`` folder, scored by the repository's scorer (``devscore.py``)."""
    assert data is not None, "dev checks need --dev DIR"
    from devscore import score_dev
    if mode == "denoiser":
        import tune

        from server.dsp import denoiser
        from server.dsp.model import load_weights
        denoiser.use_weights(load_weights(npz))
        res = score_dev(data, denoiser.enhance)
        return res, tune.summary_line(res)
    import eval_model
    eval_model.configure(npz, exponent)
    return score_dev(data, eval_model.enhance), ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=50.0)
    ap.add_argument("--eval-every", type=float, default=10.0, help="minutes between dev checks")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--exponent", type=float, default=1.0, help="gain exponent used for dev checks")
    ap.add_argument("--resume", type=str, default="")
    ap.add_argument("--spec-weight", type=float, default=1.0)
    ap.add_argument("--tag", default="", help="checkpoint name prefix (for a second run)")
    ap.add_argument("--best", type=float, default=-1e9,
                    help="export only checkpoints whose dev dPESQ + W dESTOI beats this (e.g. the last run's)")
    ap.add_argument("--estoi-weight", type=float, default=5.0, help="W in the dev criterion dPESQ + W dESTOI")
    add_dev_argument(ap, required=False)
    ap.add_argument("--dev-mode", choices=("model", "denoiser"), default="model",
                    help="score the model alone or the full denoiser (model x classical gain) on dev")
    ap.add_argument("--under", type=float, default=0.0,
                    help="extra loss weight on errors that remove speech (0 = symmetric, as the first recipe)")
    ap.add_argument("--combined", action="store_true",
                    help="train the gain the denoiser applies: model gain x classical gain (see losses)")
    ap.add_argument("--noise-weights", default="",
                    help="relative draw weights of noise types, e.g. babble=2.5,music=2 (default: uniform)")
    ap.add_argument("--data", default=str(DATA_DIR), help="the output of make_data.py")
    ap.add_argument("--df", action="store_true", help=f"the deep-filter model ({DF_BINS} low bins, {DF_TAPS} taps)")
    ap.add_argument("--df-rank", type=int, default=0,
                    help="low-rank deep-filter head (--df, or --resume of a full-rank one: factored by SVD)")
    ap.add_argument("--pitch", action="store_true", help="periodicity features (server/dsp/pitch.py) into GRU1")
    ap.add_argument("--init", default="", help="warm start from a shipped .npz (see warm_start)")
    ap.add_argument("--complex-weight", type=float, default=0.5, help="weight of the compressed complex loss (--df)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    type_weights = {k: float(v) for k, v in (kv.split("=") for kv in args.noise_weights.split(",") if kv)}
    mixer = Mixer(Path(args.data), rng, type_weights or None)
    fe = Frontend()
    seg = int(SEG_S * SR)
    if args.resume:
        state = torch.load(args.resume)
        if args.df_rank and "df_in.weight" not in state:
            model = GainNet.from_state(state)
            model = GainNet(df_bins=model.df_bins, df_taps=model.df_taps,
                            lo_dense=int(state["dense_lo.weight"].shape[0]), df_rank=args.df_rank)
            factor_head(model, state)
        else:
            model = GainNet.from_state(state)
            model.load_state_dict(state)
    else:
        model = GainNet(df_bins=DF_BINS if args.df else 0, df_rank=args.df_rank, pitch=args.pitch)
        fresh = warm_start(model, Path(args.init)) if args.init else list(model.state_dict())
        # feature normalisation from a few batches (the ones the initial weights do not fix)
        with torch.no_grad():
            fs, ls = [], []
            for _ in range(8):
                _, s, n = mixer.batch(args.batch, seg)
                col = fe.colouration(args.batch, rng)
                p = fe.power((fe.stft(torch.from_numpy(s)) + fe.stft(torch.from_numpy(n))) * col)
                fs.append(fe.logband(p).reshape(-1, 40))
                if model.df_bins:
                    ls.append(fe.loglo(p, model.df_bins).reshape(-1, model.df_bins))
            if "feat_mean" in fresh:
                f = torch.cat(fs)
                model.feat_mean.copy_(f.mean(0))
                model.feat_std.copy_(f.std(0).clamp(min=0.5))
            if model.df_bins and "lo_mean" in fresh:
                f = torch.cat(ls)
                model.lo_mean.copy_(f.mean(0))
                model.lo_std.copy_(f.std(0).clamp(min=0.5))
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    CKPT_DIR.mkdir(exist_ok=True)
    log = open(CKPT_DIR / "train_log.txt", "a")

    def say(msg: str) -> None:
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    say(f"model {'deep filter ' + str(model.df_bins) + ' bins' if model.df_bins else 'band gains'}"
        f"{' + periodicity' if model.n_pitch else ''}, "
        f"init {args.init or '-'}, reverb {mixer.reverb_p}, telephone {TELEPHONE_P}")
    say(f"params {n_params}, batch {args.batch} x {SEG_S} s, {args.minutes} min, seed {args.seed}, "
        f"lr {args.lr}, under {args.under}, combined {args.combined}, "
        f"noise weights {type_weights or 'uniform'}, resume {args.resume or '-'}")
    t_start = time.time()
    train_s = 0.0  # time spent training (dev checks excluded)
    next_eval = args.eval_every * 60
    step, acc = 0, np.zeros(3)
    best = args.best
    history = []
    while True:
        t0 = time.time()
        frac = min(1.0, train_s / (args.minutes * 60))
        if frac > 0.03:  # cosine decay to 5 % after a short warm-up
            lr = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        else:
            lr = args.lr * frac / 0.03 + 1e-5
        for gr in opt.param_groups:
            gr["lr"] = lr
        s, s_in, n = mixer.batch(args.batch, seg)
        col = fe.colouration(args.batch, rng)
        gl, sl, vl = losses(fe, model, torch.from_numpy(s), torch.from_numpy(n), col, args.under, args.combined,
                            torch.from_numpy(s_in), args.complex_weight if model.df_bins else 0.0)
        loss = gl + args.spec_weight * sl + 0.05 * vl
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        acc += [gl.item(), sl.item(), vl.item()]
        step += 1
        train_s += time.time() - t0
        if step % 100 == 0:
            a = acc / 100
            acc[:] = 0
            say(f"step {step} t {train_s / 60:.1f} min lr {lr:.2e} gain {a[0]:.4f} spec {a[1]:.4f} vad {a[2]:.4f}")
        done = train_s >= args.minutes * 60
        if train_s >= next_eval or done:
            next_eval += args.eval_every * 60
            ck = CKPT_DIR / f"ckpt_{args.tag}{step:06d}.npz"
            export_npz(model, ck)
            torch.save(model.state_dict(), CKPT_DIR / f"ckpt_{args.tag}{step:06d}.pt")
            torch.save(model.state_dict(), CKPT_DIR / "last.pt")
            if args.dev is None:  # no dev folder: checkpoints only (score them with tune.py --dev)
                say(f"checkpoint {ck.name} at {train_s / 60:.1f} min")
                if done:
                    break
                continue
            t1 = time.time()
            summ, line = dev_score(ck, args.exponent, args.dev_mode, args.dev)
            o = summ["overall"]
            crit = o["d_pesq"] + args.estoi_weight * o["d_estoi"]
            history.append({"step": step, "train_min": train_s / 60, "d_pesq": o["d_pesq"],
                            "estoi": o["estoi"], "d_si_sdr": o["d_si_sdr"],
                            "clean_in_pesq": summ["clean_in"]["pesq"] if summ["clean_in"] else None})
            say(f"DEV step {step} (crit {crit:.4f}): dPESQ {o['d_pesq']:+.3f} ESTOI {o['estoi']:.3f} "
                f"dSI-SDR {o['d_si_sdr']:+.2f} clean-in {history[-1]['clean_in_pesq']} "
                f"atten {summ['noise_only_attenuation_db']} ({time.time() - t1:.0f} s)")
            if line:
                say(f"  {line}")
            if crit > best:
                best = crit
                shutil.copy(ck, WEIGHTS_OUT)
                shutil.copy(CKPT_DIR / f"ckpt_{args.tag}{step:06d}.pt", CKPT_DIR / "best.pt")
                say(f"  -> best so far, exported to {WEIGHTS_OUT.relative_to(ROOT)}")
            (CKPT_DIR / "history.json").write_text(json.dumps(history, indent=1))
        if done:
            break
    say(f"finished: {step} steps, {train_s / 60:.1f} min training, wall {(time.time() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    main()
