"""Hostile uploads, generated here: each gets its documented outcome, the server stays up, and a
refused file leaves no blob and no row behind (docs/design.md, "Checking uploads" and "Errors")."""

from __future__ import annotations

import io
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ServerProcess, create_key, start_server

from client import HushwireClientError, JobsClient
from client.jobs import STATUS_NAMES


def _encode(x: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _noise(seconds: float = 1.0, rate: int = 16000, channels: int = 1) -> np.ndarray:
    return (np.random.default_rng(7).standard_normal((int(seconds * rate), channels)) * 0.05).astype(np.float32)


def _patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def _wav() -> bytes:
    return _encode(_noise(), 16000)


def _nan_floats() -> bytes:
    x = _noise()
    x[::7] = np.nan
    x[3::11] = np.inf
    x[5::13] = -np.inf
    return _encode(x, 16000, subtype="FLOAT")


def _flac_claiming_huge_length() -> bytes:
    b = bytearray(_encode(_noise(0.2), 16000, "FLAC"))
    b[8 + 13] |= 0x0F            # STREAMINFO: total samples is 36 bits at byte 13 (low nibble) .. 17
    b[8 + 14 : 8 + 18] = b"\xff\xff\xff\xff"
    return bytes(b)


def _flac_of_unknown_length(seconds: float = 1.0) -> bytes:
    """STREAMINFO's total samples 0: "unknown", which the FLAC format allows (an encoder writing to a pipe)."""
    b = bytearray(_encode(_noise(seconds, 48000, 2), 48000, "FLAC"))
    b[8 + 13] &= 0xF0
    b[8 + 14 : 8 + 18] = b"\0\0\0\0"
    return bytes(b)


def _truncated(fmt: str, subtype: str) -> Callable[[], bytes]:
    def make() -> bytes:
        data = _encode(_noise(4.0, 48000 if fmt != "MP3" else 44100), 48000 if fmt != "MP3" else 44100, fmt, subtype)
        return data[: len(data) // 2]
    return make


CASES: list[tuple[str, Callable[[], bytes], str]] = [
    ("zero bytes", lambda: b"", "refused:INVALID_FILE"),
    ("WAV header only", lambda: _wav()[:44], "refused:INVALID_FILE"),
    ("header claims more data", lambda: _wav()[: len(_wav()) // 3], "refused:INVALID_FILE"),
    ("wrong fmt chunk size", lambda: _patched(_wav(), 16, "<I", 1000), "refused:INVALID_FILE"),
    ("RIFF size too small", lambda: _patched(_wav(), 4, "<I", 5), "completed"),
    ("0 Hz rate", lambda: _patched(_wav(), 24, "<I", 0), "refused:INVALID_FILE"),
    ("1 Hz rate", lambda: _patched(_wav(), 24, "<I", 1), "refused:INVALID_FILE"),
    ("0 channels", lambda: _patched(_wav(), 22, "<H", 0), "refused:INVALID_FILE"),
    ("300 channels", lambda: _patched(_wav(), 22, "<H", 300), "refused:INVALID_FILE"),
    ("8-bit", lambda: _encode(_noise(), 16000, subtype="PCM_U8"), "completed"),
    ("24-bit", lambda: _encode(_noise(), 16000, subtype="PCM_24"), "completed"),
    ("64-bit float", lambda: _encode(_noise(), 16000, subtype="DOUBLE"), "completed"),
    ("NaN and inf floats", _nan_floats, "completed"),
    ("text named .wav", lambda: b"RIFF? no, just text\n" * 40, "refused:INVALID_FILE"),
    ("PNG", lambda: b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + b"\0" * 200, "refused:INVALID_FILE"),
    ("FLAC claiming 68 G frames", _flac_claiming_huge_length, "refused:FILE_TOO_LARGE"),
    ("FLAC of unknown length", _flac_of_unknown_length, "completed"),
    ("truncated FLAC", _truncated("FLAC", "PCM_16"), "failed:INVALID_FILE"),
    ("truncated OGG", _truncated("OGG", "VORBIS"), "completed"),
    ("truncated MP3", _truncated("MP3", "MPEG_LAYER_III"), "failed:INVALID_FILE"),
]


def _stored(server: ServerProcess) -> tuple[int, int]:
    con = sqlite3.connect(server.data_dir / "hushwire.db")
    rows = con.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    con.close()
    return rows, sum(1 for p in (server.data_dir / "blobs").rglob("*") if p.is_file())


@pytest.mark.parametrize(("name", "make", "expected"), CASES, ids=[c[0] for c in CASES])
def test_hostile_upload(server: ServerProcess, api_key: str, name: str, make: Callable[[], bytes],
                        expected: str) -> None:
    data = make()
    with JobsClient(server.target, api_key) as jobs:
        before = _stored(server)
        try:
            job = jobs.submit(io.BytesIO(data), file_name="hostile.wav")
        except HushwireClientError as err:
            assert expected == f"refused:{err.code}", f"{name}: refused with {err.code}: {err.msg}"
            assert err.msg and err.msg != "Invalid file type from input" or err.code != "INVALID_FILE"
            assert _stored(server) == before, "a refused upload left a row or a blob"
            return
        done = jobs.wait(job.job_id, timeout=120)
        status = STATUS_NAMES[done.status]
        outcome = status if status == "completed" else f"{status}:{done.error.code}"
        assert outcome == expected, f"{name}: {outcome} {done.error.msg}"
        if status == "completed":
            _, out = jobs.download(job.job_id)
            y, _ = sf.read(io.BytesIO(out), dtype="float32")
            assert np.all(np.isfinite(y)) and sf.info(io.BytesIO(out)).frames == done.duration_seconds * \
                done.sample_rate_hz
        # The server is still up and serving.
        assert jobs.get(job.job_id).job_id == job.job_id


@pytest.mark.slow
def test_very_long_silence_completes(server: ServerProcess, api_key: str, tmp_path: Path) -> None:
    src = tmp_path / "silence.wav"
    sf.write(str(src), np.zeros(8000 * 600, np.float32), 8000, subtype="PCM_U8")  # 10 minutes
    with JobsClient(server.target, api_key) as jobs:
        done = jobs.wait(jobs.submit(src).job_id, timeout=300)
        assert STATUS_NAMES[done.status] == "completed"
        _, out = jobs.download(done.job_id)
    y, _ = sf.read(io.BytesIO(out), dtype="float32")
    assert y.shape[0] == 8000 * 600 and np.max(np.abs(y)) <= 1 / 128


def test_flac_of_unknown_length_is_held_to_the_duration_limit_while_decoding(tmp_path: Path) -> None:
    """It was refused as FILE_TOO_LARGE "576460752303424 s of audio" (libsndfile's largest count); now
    its length is measured by decoding it, and the limit stops the count as soon as it is passed."""
    key = create_key(tmp_path)
    srv = start_server(tmp_path, "--max-upload-seconds", "2")
    try:
        with JobsClient(srv.target, key) as jobs:
            with pytest.raises(HushwireClientError) as info:
                jobs.submit(io.BytesIO(_flac_of_unknown_length(3.0)), file_name="long.flac")
            assert info.value.code == "FILE_TOO_LARGE" and "measured while decoding" in info.value.msg
            job = jobs.submit(io.BytesIO(_flac_of_unknown_length(1.5)), file_name="short.flac")
            assert job.duration_seconds == 1.5 and job.billed_time == 3.0   # 2 channels
            done = jobs.wait(job.job_id, timeout=120)
            assert STATUS_NAMES[done.status] == "completed", done.error.msg
            _, out = jobs.download(job.job_id)
        assert sf.info(io.BytesIO(out)).frames == 72000
    finally:
        assert srv.stop() == 0
