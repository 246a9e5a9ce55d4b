"""Noise power spectral density tracking.

Speech-presence-probability (SPP) based MMSE noise power estimator of
Gerkmann & Hendriks, "Unbiased MMSE-based noise power estimation with low complexity and
low tracking delay", IEEE Trans. ASLP 20(4), 2012. Per bin and frame:

    P(H1|y) = 1 / (1 + (1 + xi_H1) * exp(-|y|^2 / lambda * xi_H1 / (1 + xi_H1)))
    E[|N|^2 | y] = (1 - P) |y|^2 + P * lambda
    lambda <- a * lambda + (1 - a) * E[|N|^2 | y]

with a fixed a-priori SNR ``xi_H1`` under speech presence and equal priors, which makes
the estimator unbiased without a bias correction. A smoothed SPP above 0.99 caps the SPP
at 0.99 so that the estimate cannot stagnate when the noise level rises.

State arrays are ``(rows, bins)`` (one row per channel of one or many streams).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .state import RowState

Array = npt.NDArray[np.floating[Any]]  # float32 or float64, as the caller chooses

XI_H1_DB = 15.0  # a-priori SNR assumed when speech is present (paper: 15 dB)
PRIOR_H1 = 0.5  # a-priori speech presence probability (paper: 0.5)
# The paper's SPP smoothing 0.9 at a 16 ms hop, as a time constant (-16 ms / ln 0.9):
SPP_SMOOTH_MS = 152.0
# The paper's noise smoothing 0.8 at a 16 ms hop is a 72 ms time constant. 300 ms halves
# the variance of the estimate again (fewer gain outliers, less musical noise) and scored
# clearly better on dev, at the price of following a rising noise level more slowly.
NOISE_SMOOTH_MS = 300.0
SPP_STAGNATION = 0.99  # cap on the SPP while the smoothed SPP stays above it
INIT_MS = 60.0  # the first frames are averaged to start the estimate (assumed speech-free)
POWER_FLOOR = 1e-12  # keeps ratios finite on digital silence (about -120 dBFS per bin)


def smoothing_factor(time_constant_ms: float, hop_ms: float) -> float:
    """First-order recursive smoothing factor for a time constant, at a given hop."""
    return float(np.exp(-hop_ms / time_constant_ms))


class NoiseTracker:
    """Unbiased MMSE noise PSD tracker (Gerkmann & Hendriks 2012) on a row state.

    ``run(state, power)`` takes periodograms ``(hops, rows, bins)`` and returns the noise PSD
    after each hop, same shape; the recursion runs over the hops, every operation is vectorised
    over rows and bins.
    """

    def __init__(self, n_bins: int, hop_ms: float, dtype: type[np.floating] = np.float64) -> None:
        self.n_bins = n_bins
        self.dtype = dtype
        xi_h1 = 10.0 ** (XI_H1_DB / 10.0)
        # P(H1|y) = 1 / (1 + F exp(-c gamma)), F the prior odds times (1 + xi_H1)
        self._glr_factor = (1.0 - PRIOR_H1) / PRIOR_H1 * (1.0 + xi_h1)
        self._glr_exp = xi_h1 / (1.0 + xi_h1)
        self._alpha_noise = smoothing_factor(NOISE_SMOOTH_MS, hop_ms)
        self._alpha_spp = smoothing_factor(SPP_SMOOTH_MS, hop_ms)
        self.init_frames = max(1, round(INIT_MS / hop_ms))

    def init_state(self, state: RowState, rows: int) -> None:
        state["noise.psd"] = np.full((rows, self.n_bins), POWER_FLOOR, self.dtype)  # lambda_N per bin
        state["noise.spp_smooth"] = np.zeros((rows, self.n_bins), self.dtype)  # recursive mean of the SPP
        state["noise.frames"] = np.zeros(rows, dtype=np.int64)  # frames seen, saturating after the start

    def run(self, state: RowState, power: Array) -> Array:
        """Noise PSD after each hop for periodograms ``power`` ``(hops, rows, bins)``."""
        out = np.empty_like(power)
        lam = state["noise.psd"]
        sm = state["noise.spp_smooth"]
        frames = state["noise.frames"]
        starting = bool(frames.size) and int(frames.min()) < self.init_frames
        spp = np.empty_like(lam)
        tmp = np.empty_like(lam)
        a_spp, a_noise = self._alpha_spp, self._alpha_noise
        prev: Array = lam
        for t in range(power.shape[0]):
            p = power[t]
            cur = out[t]
            if starting:
                start_rows = frames < self.init_frames
                start_lam, start_sm = prev[start_rows], sm[start_rows]
            # Posterior SPP.
            np.divide(p, prev, out=tmp)
            tmp *= -self._glr_exp  # <= 0: exp cannot overflow (scipy's expit is 5x slower on big batches)
            np.exp(tmp, out=tmp)
            tmp *= self._glr_factor
            tmp += 1.0
            np.reciprocal(tmp, out=spp)
            # Stagnation control: cap the SPP while its smoothed value stays above the cap.
            sm *= a_spp
            np.multiply(spp, 1.0 - a_spp, out=tmp)
            sm += tmp
            np.minimum(spp, SPP_STAGNATION, out=tmp)
            np.copyto(spp, tmp, where=sm > SPP_STAGNATION)
            # E[|N|^2 | y] = lam + (1 - P) (|y|^2 - lam), smoothed: lam += (1 - a)(1 - P)(|y|^2 - lam).
            np.subtract(p, prev, out=tmp)
            spp *= a_noise - 1.0
            spp += 1.0 - a_noise
            tmp *= spp
            np.add(prev, tmp, out=cur)
            np.maximum(cur, POWER_FLOOR, out=cur)
            if starting:
                # Running mean of the first frames: a starting point the tracker refines.
                count = frames[start_rows] + 1
                cur[start_rows] = np.maximum(start_lam + (p[start_rows] - start_lam) / count[:, None], POWER_FLOOR)
                sm[start_rows] = start_sm
                frames[start_rows] = count
                starting = int(frames.min()) < self.init_frames
            prev = cur
        if power.shape[0]:
            lam[...] = out[-1]
        return out
