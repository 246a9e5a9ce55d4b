"""One live stream's domain logic, without grpc: check the config and each chunk, run the denoiser.

The servicer unpacks protobuf messages into these calls and maps :class:`HushwireError` to a status.
"""

from __future__ import annotations

import math

import numpy as np

from server import pcm
from server.dsp import SUPPORTED_RATES, Denoiser
from server.errors import HushwireError

__all__ = ["MAX_CHANNELS", "MAX_CHUNK_SECONDS", "StreamSession"]

MAX_CHANNELS = 8
MAX_CHUNK_SECONDS = 1.0


def _invalid(msg: str) -> HushwireError:
    return HushwireError("INVALID_ARGUMENT", msg)


def _check_limit(db: float | None) -> float | None:
    if db is None:
        return None
    if not math.isfinite(db) or db < 0:
        raise _invalid(f"attenuation_limit_db must be a finite number >= 0, got {db}")
    return float(db)


class StreamSession:
    """A configured stream: bytes in, denoised bytes out, same encoding and channels."""

    def __init__(
        self, sample_rate_hz: int, channels: int, encoding: int, attenuation_limit_db: float | None = None
    ) -> None:
        if sample_rate_hz not in SUPPORTED_RATES:
            rates = ", ".join(str(r) for r in SUPPORTED_RATES)
            raise _invalid(f"unsupported sample_rate_hz {sample_rate_hz}; supported: {rates}")
        if not 1 <= channels <= MAX_CHANNELS:
            raise _invalid(f"channels must be 1..{MAX_CHANNELS}, got {channels}")
        if encoding not in pcm.BYTES_PER_SAMPLE:
            raise _invalid(f"unsupported encoding {encoding}: use SAMPLE_ENCODING_PCM16 or SAMPLE_ENCODING_FLOAT32")
        self.sample_rate_hz = sample_rate_hz
        self.channels = channels
        self.encoding = encoding
        self.frame_bytes = pcm.BYTES_PER_SAMPLE[encoding] * channels
        self.max_chunk_bytes = int(MAX_CHUNK_SECONDS * sample_rate_hz) * self.frame_bytes
        self.denoiser = Denoiser(sample_rate_hz, channels, _check_limit(attenuation_limit_db))
        self.frames_in = 0
        self.frames_out = 0

    @property
    def delay_samples(self) -> int:
        return int(self.denoiser.latency_samples)

    def update(self, attenuation_limit_db: float | None, bypass: bool | None) -> None:
        """Apply a mid-stream update; ``None`` leaves a setting unchanged."""
        if attenuation_limit_db is not None:
            self.denoiser.attenuation_limit_db = _check_limit(attenuation_limit_db)
        if bypass is not None:
            self.denoiser.bypass = bool(bypass)

    def process(self, audio: bytes) -> tuple[bytes, float]:
        """Denoise one chunk; returns the output that became ready and the chunk's voice probability."""
        if len(audio) % self.frame_bytes:
            raise _invalid(
                f"audio chunk of {len(audio)} bytes is not whole frames "
                f"({self.frame_bytes} bytes per frame: {self.channels} channel(s))"
            )
        if len(audio) > self.max_chunk_bytes:
            raise _invalid(
                f"audio chunk of {len(audio) // self.frame_bytes} frames is over "
                f"{MAX_CHUNK_SECONDS:g} s ({self.max_chunk_bytes // self.frame_bytes} frames)"
            )
        x = pcm.decode(audio, self.encoding, self.channels)
        self.frames_in += x.shape[0]
        y = self.denoiser.process(x)
        self.frames_out += y.shape[0]
        return pcm.encode(y, self.encoding), float(self.denoiser.voice_probability)

    def flush(self) -> bytes:
        y: np.ndarray = self.denoiser.flush()
        self.frames_out += y.shape[0]
        return pcm.encode(y, self.encoding)
