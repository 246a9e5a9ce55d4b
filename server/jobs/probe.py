"""The header checks an upload passes before the server replies (docs/design.md, "Checking uploads").

:func:`probe` reads only the header (soundfile), so it is quick whatever the file's length; a file
that passes but fails during the full decode becomes a failed job instead (:mod:`.worker`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from hushwire.contract.limits import MAX_CHANNELS
from hushwire.contract.limits import MAX_FILE_RATE_HZ as MAX_RATE_HZ
from hushwire.contract.limits import MIN_FILE_RATE_HZ as MIN_RATE_HZ
from server.errors import HushwireError

__all__ = ["ACCEPTED_SUBTYPES", "MAX_CHANNELS", "MAX_RATE_HZ", "MIN_RATE_HZ", "UNKNOWN_FRAMES", "Probe", "open_audio",
           "probe"]

# Sample formats accepted: 8/16/24/32-bit integer, 32/64-bit float, and compressed codecs.
ACCEPTED_SUBTYPES = {
    "PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE",
    "VORBIS", "OPUS", "MPEG_LAYER_III", "MPEG_LAYER_II", "MPEG_LAYER_I",
}
# libsndfile's frame count for a stream that does not declare its length: a FLAC whose STREAMINFO
# says total_samples 0 ("unknown", which the FLAC format allows, e.g. from an encoder writing to a pipe).
UNKNOWN_FRAMES = 2**63 - 1
COUNT_BLOCK_FRAMES = 1 << 16   # frames decoded per read while counting an undeclared length
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
    frames = int(info.frames)
    if frames == UNKNOWN_FRAMES:
        frames = _count_frames(path, info.samplerate, max_seconds)
    if frames < 1:
        raise _invalid("the file has no audio frames")
    if info.format in ("WAV", "W64", "RF64", "AIFF"):
        # libsndfile trims a short data chunk silently but notes it in its header log.
        m = _SHORT_DATA.search(info.extra_info)
        if m and int(m.group(1)) > int(m.group(2)):
            raise _invalid(f"the header declares {m.group(1)} bytes of audio data but the file holds {m.group(2)}")
    seconds = frames / info.samplerate
    if seconds > max_seconds:
        raise HushwireError("FILE_TOO_LARGE", f"{seconds:.0f} s of audio is over the limit of {max_seconds:.0f} s")
    return Probe(info.format, info.subtype, int(info.samplerate), int(info.channels), frames)


class _Stream(sf.SoundFile):
    """A file read front to back only. soundfile tells and seeks around every read of a seekable file,
    and libsndfile cannot seek in a FLAC of undeclared length (``psf_fseek() failed`` at its end)."""

    def seekable(self) -> bool:
        return False


def open_audio(path: Path) -> sf.SoundFile:
    """Open an upload for decoding; one of undeclared length (:data:`UNKNOWN_FRAMES`) as a stream."""
    f = sf.SoundFile(str(path))
    if f.frames != UNKNOWN_FRAMES:
        return f
    f.close()
    return _Stream(str(path))


def _count_frames(path: Path, rate: int, max_seconds: float) -> int:
    """The length of a file that does not declare it, by decoding it, and the duration limit enforced
    while decoding: the count stops as soon as it passes the limit. The upload's byte limit bounds the
    work (FLAC decodes at hundreds of times real time); the job's billed seconds need the length."""
    limit = int(max_seconds * rate)
    frames = 0
    try:
        with open_audio(path) as f:
            while block := f.read(COUNT_BLOCK_FRAMES, dtype="int16", always_2d=True).shape[0]:
                frames += block
                if frames > limit:
                    raise HushwireError("FILE_TOO_LARGE", f"over {max_seconds:.0f} s of audio, the limit (the file "
                                        "does not declare its length; it was measured while decoding)")
    except HushwireError:
        raise
    except Exception:   # libsndfile's decoding errors come in several types
        raise _invalid(f"decoding failed after {frames / rate:.2f} s of audio: the file is damaged or "
                       "truncated") from None
    return frames
