"""Audio files for the client commands: read with soundfile, resample with soxr, write in the input's format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

__all__ = ["AudioFile", "STREAM_RATES", "from_stream_rate", "read_audio", "stream_rate", "to_stream_rate",
           "write_like"]

# The live stream's native rates (docs/design.md); anything else is resampled on the way in and out.
STREAM_RATES = (8000, 16000, 24000, 32000, 44100, 48000)


@dataclass(frozen=True)
class AudioFile:
    samples: np.ndarray   # float32 (frames, channels)
    sample_rate: int
    format: str           # soundfile container, e.g. "WAV", "FLAC"
    subtype: str          # soundfile sample format, e.g. "PCM_16"


def read_audio(path: str | Path) -> AudioFile:
    info = sf.info(str(path))
    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return AudioFile(samples, int(rate), info.format, info.subtype)


def write_like(path: str | Path, samples: np.ndarray, like: AudioFile) -> None:
    """Write ``samples`` with the container, rate and sample format of ``like`` (WAV PCM16 if impossible)."""
    y = np.clip(samples, -1.0, 1.0)
    if sf.check_format(like.format, like.subtype):
        sf.write(str(path), y, like.sample_rate, format=like.format, subtype=like.subtype)
    else:
        sf.write(str(path), y, like.sample_rate, format="WAV", subtype="PCM_16")


def stream_rate(rate: int) -> int:
    """The native rate to process ``rate`` at: itself if supported, else the next one up (max 48 kHz)."""
    if rate in STREAM_RATES:
        return rate
    return next((r for r in STREAM_RATES if r >= rate), STREAM_RATES[-1])


def to_stream_rate(samples: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    target = stream_rate(rate)
    if target == rate:
        return samples, rate
    return soxr.resample(samples, rate, target, quality="HQ").astype(np.float32), target


def from_stream_rate(samples: np.ndarray, rate: int, original_rate: int, frames: int) -> np.ndarray:
    """Back to ``original_rate`` with exactly ``frames`` frames."""
    if rate != original_rate:
        samples = soxr.resample(samples, rate, original_rate, quality="HQ").astype(np.float32)
    if samples.shape[0] >= frames:
        return samples[:frames]
    pad = np.zeros((frames - samples.shape[0], samples.shape[1]), np.float32)
    return np.concatenate([samples, pad])
