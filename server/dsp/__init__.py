"""hushwire's denoiser: pure numpy/scipy, streaming, no I/O and no grpc.

``Denoiser`` is the streaming state object; ``DenoiserPool`` holds the state of many of them
so their chunks can be processed as one batch; ``enhance`` runs a denoiser over a whole signal
with the delay removed.
"""

from .denoiser import SUPPORTED_RATES, Denoiser, DenoiserPool, enhance

__all__ = ["SUPPORTED_RATES", "Denoiser", "DenoiserPool", "enhance"]
