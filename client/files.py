"""Audio files for the client commands: read with soundfile, resample with soxr, write in the input's format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from hushwire.contract.limits import native_rate

__all__ = ["AudioFile", "from_stream_rate", "read_audio", "stream_rate", "to_stream_rate", "write_like"]


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
    """The live stream's rate for audio at ``rate`` (:func:`hushwire.contract.limits.native_rate`)."""
    return native_rate(rate)


def to_stream_rate(samples: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    """``samples`` at a rate the live stream supports, resampled (soxr) if needed."""
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
