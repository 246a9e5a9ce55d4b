"""Faults: a full disk gives a clear error and no corruption; kills during upload lose nothing accepted."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import create_key, start_server

from client import HushwireClientError, JobsClient
from client.jobs import STATUS_NAMES


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _wav(path: Path, seconds: float) -> Path:
    x = (np.random.default_rng(1).standard_normal(int(16000 * seconds)) * 0.05).astype(np.float32)
    sf.write(str(path), x, 16000, subtype="PCM_16")
    return path


def test_full_disk_is_a_clear_error_not_corruption(tmp_path: Path, small_disk: Path) -> None:
    key = create_key(tmp_path)
    srv = start_server(tmp_path, "--blob-url", f"file://{small_disk}")
    try:
        with JobsClient(srv.target, key) as c:
            with pytest.raises(HushwireClientError) as info:  # 6.4 MB does not fit in 3 MB
                c.submit(_wav(tmp_path / "big.wav", 200.0))
            assert info.value.code == "SERVICE_UNAVAILABLE" and "storage is full" in info.value.msg
            assert not [p for p in small_disk.rglob("*") if p.is_file()], "a partial upload was left behind"
            # 1.9 MB fits, but its 1.9 MB result does not: the job fails cleanly, with no partial result.
            job = c.wait(c.submit(_wav(tmp_path / "mid.wav", 60.0)).job_id, timeout=60)
            assert STATUS_NAMES[job.status] == "failed" and job.error.code == "SERVICE_UNAVAILABLE"
            assert not [p for p in small_disk.glob("results/*")], "a partial result was left behind"
            c.cancel(job.job_id)  # frees the upload
            small = c.wait(c.submit(_wav(tmp_path / "small.wav", 1.0)).job_id, timeout=60)
            assert STATUS_NAMES[small.status] == "completed"  # and the server still works
            _, data = c.download(small.job_id)
            assert sf.info(io.BytesIO(data)).frames == 16000
        con = sqlite3.connect(tmp_path / "hushwire.db")
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        assert srv.stop() == 0


@pytest.mark.slow
def test_sigkill_during_upload_leaves_no_job(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    srv = start_server(tmp_path)
    src = _wav(tmp_path / "a.wav", 120.0)
    killed = threading.Event()

    class SlowFile(io.BytesIO):
        def read(self, n: int = -1) -> bytes:  # slow enough that the kill lands mid-upload
            if self.tell() > 1_000_000 and not killed.is_set():
                srv.proc.send_signal(signal.SIGKILL)
                killed.set()
                time.sleep(0.5)
            return super().read(n)

    with JobsClient(srv.target, key) as c, pytest.raises(HushwireClientError):
        c.submit(SlowFile(src.read_bytes()), file_name="a.wav")
    srv.proc.wait(10)
    srv2 = start_server(tmp_path)
    try:
        with JobsClient(srv2.target, key) as c:
            assert list(c.list()) == []  # the upload was never accepted, so there is no job
            job = c.wait(c.submit(src).job_id, timeout=60)  # and the next one works
            assert STATUS_NAMES[job.status] == "completed"
    finally:
        assert srv2.stop() == 0
