"""Run the learned gain model as a denoiser: ``enhance(x, rate)`` for ``sweep.py`` and ``devscore.py``.

    OMP_NUM_THREADS=1 .venv/bin/python training/sweep.py --dev DIR CKPT.npz --modes model combined

Environment (all optional):
  HUSHWIRE_GAIN_WEIGHTS   .npz to load (default server/dsp/weights/gain_model.npz)
  HUSHWIRE_GAIN_EXPONENT  exponent on the band gains (default 1.0)
  HUSHWIRE_GAIN_MODE      ``model`` (default): model gain alone;
                          ``combined``: model gain x classical (OM-)LSA gain ** HUSHWIRE_LSA_POWER
  HUSHWIRE_LSA_POWER      exponent on the classical gain in combined mode (default 0.5)
  HUSHWIRE_GAIN_FLOOR_DB  lowest gain in dB (default -40)

Uses the streaming STFT of ``server/dsp/stft.py`` with the denoiser's framing
(10 ms hop, 32 ms analysis window, 10 ms delay), removes the delay and returns
an output of the input's length.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from server.dsp.model import DEFAULT_WEIGHTS, GainModel, load_weights  # noqa: E402
from server.dsp.stft import StreamingStft  # noqa: E402

HOP_MS = 10.0
ANALYSIS_MS = 32.0

_cfg: dict = {}


def configure(weights: str | Path | None = None, exponent: float | None = None, mode: str | None = None,
              lsa_power: float | None = None, floor_db: float | None = None) -> None:
    env = os.environ
    _cfg["weights"] = load_weights(weights or env.get("HUSHWIRE_GAIN_WEIGHTS") or DEFAULT_WEIGHTS)
    _cfg["exponent"] = float(exponent if exponent is not None else env.get("HUSHWIRE_GAIN_EXPONENT", 1.0))
    _cfg["mode"] = mode or env.get("HUSHWIRE_GAIN_MODE", "model")
    _cfg["lsa_power"] = float(lsa_power if lsa_power is not None else env.get("HUSHWIRE_LSA_POWER", 0.5))
    _cfg["floor"] = 10 ** (float(floor_db if floor_db is not None else env.get("HUSHWIRE_GAIN_FLOOR_DB", -40)) / 20)


def enhance(x: np.ndarray, sr: int) -> np.ndarray:
    if not _cfg:
        configure()
    hop = round(sr * HOP_MS / 1000)
    frame_len = round(sr * ANALYSIS_MS / 1000)
    stft = StreamingStft(frame_len, hop, 1)
    model = GainModel(sr, frame_len, float(np.sum(stft.analysis**2)), 1, _cfg["weights"], _cfg["exponent"])
    combined = _cfg["mode"] == "combined"
    if combined:
        from server.dsp.gain import OmLsaGain
        from server.dsp.noise import NoiseTracker
        noise = NoiseTracker(stft.n_bins, 1000.0 * hop / sr)
        lsa = OmLsaGain(stft.n_bins, _cfg["lsa_power"])
        state: dict = {}
        noise.init_state(state, 1)
        lsa.init_state(state, 1)
    n = len(x)
    n_hops = -(-(n + hop) // hop)
    xp = np.zeros(n_hops * hop)
    xp[:n] = x
    out = np.zeros((n_hops * hop, 1))
    power = np.zeros((1, stft.n_bins))
    for i in range(n_hops):
        spec = stft.analyze(xp[i * hop:(i + 1) * hop, None])
        np.multiply(spec.real, spec.real, out=power)
        power += spec.imag**2
        power *= stft.fill_scale
        g, _ = model.step(power)
        if combined:
            gc, _, _ = lsa.run(state, power[None], noise.run(state, power[None]))
            g = g * gc[0]
        spec *= np.maximum(g, _cfg["floor"])
        stft.synthesize(spec, out[i * hop:(i + 1) * hop])
    return out[stft.latency:stft.latency + n, 0].astype(np.float32)
