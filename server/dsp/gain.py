"""Spectral gain rule.

MMSE log-spectral amplitude estimator of Ephraim & Malah, "Speech enhancement using a
minimum mean-square error log-spectral amplitude estimator", IEEE Trans. ASSP 33(2), 1985:

    G = xi / (1 + xi) * exp(E1(v) / 2),   v = xi / (1 + xi) * gamma

with the a-posteriori SNR ``gamma = |Y|^2 / lambda_N`` and the a-priori SNR ``xi`` from the
decision-directed estimate of Ephraim & Malah, "... short-time spectral amplitude
estimator", IEEE Trans. ASSP 32(6), 1984:

    xi = a * |A_prev|^2 / lambda_N + (1 - a) * max(gamma - 1, 0),   xi >= XI_MIN

whose lower bound and slow recursion keep musical noise down (Cappe, "Elimination of the
musical noise phenomenon with the Ephraim and Malah noise suppressor", IEEE Trans. SAP
2(2), 1994). All arrays are ``(channels, bins)``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.special import exp1

Array = npt.NDArray[np.float64]

DD_ALPHA = 0.95  # decision-directed weight of the previous frame's estimate (E&M 1984)
XI_MIN_DB = -25.0  # a-priori SNR floor, within Cappe's recommended -25..-15 dB
V_MIN = 1e-10  # keeps E1(v) finite; the gain is capped at 1 anyway
V_MAX = 500.0  # exp(-v) underflows to 0 beyond this anyway
NOISE_OVERESTIMATE_DB = 0.0  # noise PSD scaling before the gain
OMLSA_Q = 0.5  # a-priori speech absence probability for OM-LSA (0: plain LSA)
OMLSA_GMIN_DB = -25.0
GAMMA_MAX = 1e6  # 60 dB: caps the a-posteriori SNR after digital silence in the noise estimate


class LsaGain:
    """MMSE-LSA gain with a decision-directed a-priori SNR, state in place."""

    def __init__(self, channels: int, n_bins: int) -> None:
        self._xi_min = 10.0 ** (XI_MIN_DB / 10.0)
        self.xi = np.full((channels, n_bins), self._xi_min)  # a-priori SNR of the last frame
        self.gamma = np.ones((channels, n_bins))  # a-posteriori SNR of the last frame
        self.gain = np.ones((channels, n_bins))  # unfloored gain of the last frame
        self._clean_power = np.zeros((channels, n_bins))  # |A_prev|^2 = G^2 |Y|^2 of the last frame
        self.spp = np.ones((channels, n_bins))  # conditional speech presence probability (OM-LSA)
        self._gain_min = 10.0 ** (OMLSA_GMIN_DB / 20.0)
        self._v = np.zeros((channels, n_bins))
        self._tmp = np.zeros((channels, n_bins))

    def reset(self) -> None:
        self.xi.fill(self._xi_min)
        self.gamma.fill(1.0)
        self.gain.fill(1.0)
        self._clean_power.fill(0.0)
        self.spp.fill(1.0)

    def update(self, power: Array, noise_psd: Array) -> Array:
        """Return the gain (channels, bins) for periodogram ``power`` and noise PSD."""
        gamma, xi, gain, tmp = self.gamma, self.xi, self.gain, self._tmp
        np.divide(power, noise_psd, out=gamma)
        gamma *= 10.0 ** (-NOISE_OVERESTIMATE_DB / 10.0)
        np.minimum(gamma, GAMMA_MAX, out=gamma)
        # Decision-directed a-priori SNR.
        np.subtract(gamma, 1.0, out=tmp)
        np.maximum(tmp, 0.0, out=tmp)
        tmp *= 1.0 - DD_ALPHA
        np.divide(self._clean_power, noise_psd, out=xi)
        xi *= 10.0 ** (-NOISE_OVERESTIMATE_DB / 10.0)
        xi *= DD_ALPHA
        xi += tmp
        np.maximum(xi, self._xi_min, out=xi)
        # LSA gain: wiener = xi/(1+xi); v = wiener * gamma; G = wiener * exp(E1(v)/2).
        np.add(xi, 1.0, out=gain)
        np.divide(xi, gain, out=gain)
        v = self._v
        np.multiply(gain, gamma, out=v)
        np.maximum(v, V_MIN, out=v)
        exp1(v, out=tmp)
        tmp *= 0.5
        np.exp(tmp, out=tmp)
        gain *= tmp
        np.minimum(gain, 1.0, out=gain)
        np.multiply(gain, gain, out=tmp)
        np.multiply(tmp, power, out=self._clean_power)
        if OMLSA_Q <= 0.0:
            return gain
        # OM-LSA: p = 1 / (1 + q/(1-q) (1 + xi) exp(-v)),  G = G_H1^p * G_min^(1-p).
        spp = self.spp
        np.minimum(v, V_MAX, out=tmp)
        np.negative(tmp, out=tmp)
        np.exp(tmp, out=tmp)
        np.add(xi, 1.0, out=spp)
        spp *= tmp
        spp *= OMLSA_Q / (1.0 - OMLSA_Q)
        spp += 1.0
        np.reciprocal(spp, out=spp)
        np.maximum(gain, self._gain_min, out=tmp)
        tmp /= self._gain_min
        np.log(tmp, out=tmp)
        tmp *= spp
        np.exp(tmp, out=tmp)
        np.multiply(tmp, self._gain_min, out=gain)
        return gain
