"""Names in the job pipeline: job ids, blob names, result file names and content types, and the
display names a client sends (kept harmless). No I/O."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

__all__ = ["MAX_FILE_KEY_CHARS", "MAX_FILE_NAME_CHARS", "clean_name", "content_type", "new_job_id", "result_blob",
           "result_name", "upload_blob"]

MAX_FILE_NAME_CHARS = 255
MAX_FILE_KEY_CHARS = 256
_CONTENT_TYPES = {"WAV": "audio/wav", "FLAC": "audio/flac", "OGG": "audio/ogg", "MP3": "audio/mpeg",
                  "AIFF": "audio/aiff", "W64": "audio/x-w64", "RF64": "audio/wav", "CAF": "audio/x-caf"}
_EXTENSIONS = {"WAV": "wav", "FLAC": "flac", "OGG": "ogg", "MP3": "mp3", "AIFF": "aiff", "W64": "w64",
               "RF64": "wav", "CAF": "caf"}


def new_job_id() -> str:
    """A UUID4's 16 bytes in URL-safe base64 without padding (22 characters), never starting with
    ``-`` or ``_``: one id in 64 did, and ``hushwire jobs get -Mj...`` reads as an option."""
    while True:
        job_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if job_id[0].isalnum():
            return job_id


def upload_blob(job_id: str) -> str:
    """The blob that holds a job's upload."""
    return f"uploads/{job_id}"


def result_blob(job_id: str, owner: str, attempt: int | None) -> str:
    """The blob a claim writes its result to: one per claim, so a worker whose lease ran out never
    overwrites the result of the claim that replaced it."""
    return f"results/{job_id}-{owner}" + (f"-{attempt}" if attempt is not None else "")


def content_type(fmt: str) -> str:
    return _CONTENT_TYPES.get(fmt, "application/octet-stream")


def result_name(file_name: str, fmt: str) -> str:
    stem = Path(file_name).stem or "audio"
    return f"{stem}_enhanced.{_EXTENSIONS.get(fmt, 'wav')}"


def clean_name(name: str, limit: int) -> str:
    """Keep a display name harmless: no path, no control characters, bounded length."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:limit]
