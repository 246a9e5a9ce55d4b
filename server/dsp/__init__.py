"""hushwire's denoiser: pure numpy/scipy, streaming, no I/O and no grpc.

``Denoiser`` is the streaming state object; ``DenoiserPool`` holds the state of many of them
so their chunks can be processed as one batch; ``enhance`` runs a denoiser over a whole signal
with the delay removed. ``SUPPORTED_RATES`` is the contract's (:mod:`hushwire.contract.limits`,
pure Python), re-exported as part of the denoiser's API.
"""

from hushwire.contract.limits import SUPPORTED_RATES

from .denoiser import Denoiser, DenoiserPool, enhance

__all__ = ["SUPPORTED_RATES", "Denoiser", "DenoiserPool", "enhance"]
