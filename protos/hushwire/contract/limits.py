"""Limits of the live stream and of jobs that every side checks alike (docs/design.md, "Live streaming").

Pure Python (no numpy, no grpc): the denoiser in ``server/dsp`` imports it too.
"""

from __future__ import annotations

import math
from typing import overload

__all__ = ["MAX_CHANNELS", "MAX_CHUNK_SECONDS", "MAX_FILE_RATE_HZ", "MIN_ATTENUATION_LIMIT_DB", "MIN_FILE_RATE_HZ",
     "SLOW_CONSUMER_SECONDS", "SUPPORTED_RATES", "check_attenuation_limit", "native_rate"]

# The stream's native rates; a file at another rate is resampled to one of these (soxr).
SUPPORTED_RATES: tuple[int, ...] = (8000, 16000, 24000, 32000, 44100, 48000)
# Channels per stream or file, each denoised independently.
MAX_CHANNELS = 8
# An uploaded file's rate (resampled to a supported rate for denoising, returned at its own).
MIN_FILE_RATE_HZ, MAX_FILE_RATE_HZ = 8000, 192000
# The longest audio chunk one stream request may carry.
MAX_CHUNK_SECONDS = 1.0
# The smallest attenuation limit (0 dB: pass-through); there is no largest (absent: no limit).
MIN_ATTENUATION_LIMIT_DB = 0.0
# A live stream whose client takes no response for this long is ended with SLOW_CONSUMER (the
# server's default, ``--slow-consumer-seconds``). The client library reads it the other way round:
# a stream that ended while its caller had read nothing for this long is not resumed.
SLOW_CONSUMER_SECONDS = 10.0


def native_rate(rate: int) -> int:
    """The supported rate to denoise audio at ``rate`` with: itself if supported, else the next one up
    (at most the highest); audio at another rate is resampled to it and back."""
    if rate in SUPPORTED_RATES:
        return rate
    return next((r for r in SUPPORTED_RATES if r >= rate), SUPPORTED_RATES[-1])


@overload
def check_attenuation_limit(db: float) -> float: ...
@overload
def check_attenuation_limit(db: None) -> None: ...
@overload
def check_attenuation_limit(db: float | None) -> float | None: ...


def check_attenuation_limit(db: float | None) -> float | None:
    """``db`` as a float when it is a usable attenuation limit (finite, >= 0 dB), None for no limit.

    Raises ValueError with a message fit for the caller; each side wraps it in its own error
    (INVALID_ARGUMENT on a stream, INVALID_REQUEST for a job option or a form field)."""
    if db is None:
        return None
    value = float(db)
    if not math.isfinite(value) or value < MIN_ATTENUATION_LIMIT_DB:
        raise ValueError(f"attenuation_limit_db must be a finite number >= 0, got {db}")
    return value
