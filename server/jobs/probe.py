"""The header checks an upload passes before the server replies (docs/design.md, "Checking uploads").

:func:`probe` reads only the header (soundfile), so it is quick whatever the file's length; a file
that passes but fails during the full decode becomes a failed job instead (:mod:`.worker`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from server.errors import HushwireError

__all__ = ["ACCEPTED_SUBTYPES", "MAX_CHANNELS", "MAX_RATE_HZ", "MIN_RATE_HZ", "Probe", "probe"]

MIN_RATE_HZ, MAX_RATE_HZ = 8000, 192000
MAX_CHANNELS = 8
# Sample formats accepted: 8/16/24/32-bit integer, 32/64-bit float, and compressed codecs.
ACCEPTED_SUBTYPES = {
    "PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE",
    "VORBIS", "OPUS", "MPEG_LAYER_III", "MPEG_LAYER_II", "MPEG_LAYER_I",
}
_SHORT_DATA = re.compile(r"^(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


@dataclass(frozen=True)
class Probe:
    format: str
    subtype: str
    sample_rate: int
    channels: int
    frames: int


def _invalid(msg: str) -> HushwireError:
    return HushwireError("INVALID_FILE", msg)


def probe(path: Path, max_seconds: float) -> Probe:
    """Check an upload's header; raise INVALID_FILE / FILE_TOO_LARGE. Blocks: call it off the loop."""
    size = path.stat().st_size
    if size == 0:
        raise _invalid("the file is empty")
    try:
        info = sf.info(str(path))
    except Exception:  # libsndfile's errors for non-audio input come in several types
        raise _invalid("not a readable audio file (WAV, FLAC, OGG/Vorbis, Opus, MP3, ...)") from None
    if not MIN_RATE_HZ <= info.samplerate <= MAX_RATE_HZ:
        raise _invalid(f"sample rate {info.samplerate} Hz is outside {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz")
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise _invalid(f"{info.channels} channels; 1 to {MAX_CHANNELS} are supported")
    if info.subtype not in ACCEPTED_SUBTYPES:
        raise _invalid(f"sample format {info.subtype} is not supported (8/16/24/32-bit integer, 32/64-bit float)")
    if info.frames < 1:
        raise _invalid("the file has no audio frames")
    if info.format in ("WAV", "W64", "RF64", "AIFF"):
        # libsndfile trims a short data chunk silently but notes it in its header log.
        m = _SHORT_DATA.search(info.extra_info)
        if m and int(m.group(1)) > int(m.group(2)):
            raise _invalid(f"the header declares {m.group(1)} bytes of audio data but the file holds {m.group(2)}")
    seconds = info.frames / info.samplerate
    if seconds > max_seconds:
        raise HushwireError("FILE_TOO_LARGE", f"{seconds:.0f} s of audio is over the limit of {max_seconds:.0f} s")
    return Probe(info.format, info.subtype, int(info.samplerate), int(info.channels), int(info.frames))
