"""hushwire's denoiser: pure numpy/scipy, streaming, no I/O and no grpc.

``Denoiser`` is the streaming state object; ``enhance`` runs it over a whole signal with
the delay removed.
"""

from .denoiser import SUPPORTED_RATES, Denoiser, enhance

__all__ = ["SUPPORTED_RATES", "Denoiser", "enhance"]
