"""The worker's ``run_job`` without a server process: a real SQLite store and blob folder in
tmp_path, one claimed job, and the typed outcome it returns."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from server.blobs import LocalBlobs
from server.jobs import JobOutcome, Outcome, new_job_id, run_job
from server.jobs.runner import MAX_ATTEMPTS
from server.store import COMPLETED, FAILED, PENDING, JobRow, Store

RATE = 16000
OWNER = "unit-test"


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = tmp / "hushwire.db"
        self.store = Store(self.db, b"pepper")
        self.uid = self.store.create_user("ann")
        self.key_id, _ = self.store.create_key(self.uid)
        self.blobs = LocalBlobs(tmp / "blobs")

    def job(self, content: bytes, frames: int, fmt: str = "WAV", subtype: str = "PCM_16") -> str:
        job_id = new_job_id()
        with self.blobs.writer(f"uploads/{job_id}") as f:
            f.write(content)
        now = time.time()
        self.store.create_job(JobRow(
            job_id=job_id, uid=self.uid, key_id=self.key_id, status=PENDING, progress=0.0, held=False,
            file_name="a.wav", file_key="file", attenuation_limit_db=None, created_at=now, mod_time=now,
            format=fmt, subtype=subtype, sample_rate=RATE, channels=1, frames=frames, upload_bytes=len(content),
            upload_blob=f"uploads/{job_id}"))
        claimed = self.store.claim_next(OWNER, 60.0, MAX_ATTEMPTS)
        assert claimed is not None and claimed.job_id == job_id
        return job_id

    def run(self, job_id: str, owner: str = OWNER, attempt: int | None = 1) -> JobOutcome:
        return run_job(str(self.db), self.blobs.url, str(self.tmp), job_id, owner, 60.0, attempt)


def _wav(path: Path, seconds: float) -> np.ndarray:
    x = (np.random.default_rng(0).standard_normal((int(seconds * RATE), 1)) * 0.03).astype(np.float32)
    sf.write(str(path), x, RATE, subtype="PCM_16")
    return x


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    return Bench(tmp_path)


def test_a_job_completes_with_a_result_of_the_inputs_length(bench: Bench) -> None:
    x = _wav(bench.tmp / "in.wav", 1.3)
    job_id = bench.job((bench.tmp / "in.wav").read_bytes(), x.shape[0])
    assert bench.run(job_id) == JobOutcome(Outcome.COMPLETED)
    row = bench.store.get_job(job_id)
    assert row is not None and row.status == COMPLETED and row.lease_owner is None and row.result_blob
    out, rate = sf.read(str(bench.blobs.local_path(row.result_blob)), dtype="float32")
    assert rate == RATE and out.shape[0] == x.shape[0]
    assert bench.store.usage(bench.key_id)[0][3] == 1  # billed once


def test_an_undecodable_upload_fails_with_invalid_file(bench: Bench) -> None:
    job_id = bench.job(b"RIFF but not really a wave file" * 10, 16000)
    outcome = bench.run(job_id)
    assert outcome.outcome is Outcome.FAILED and outcome.error_code == "INVALID_FILE", outcome
    row = bench.store.get_job(job_id)
    assert row is not None and row.status == FAILED and row.error_code == "INVALID_FILE"
    assert row.error_msg == outcome.error_msg


def test_a_truncated_upload_fails_after_decoding_what_it_holds(bench: Bench) -> None:
    x = _wav(bench.tmp / "in.wav", 1.0)
    job_id = bench.job((bench.tmp / "in.wav").read_bytes(), 3 * x.shape[0])  # the row expects more frames
    outcome = bench.run(job_id)
    assert outcome.outcome is Outcome.FAILED and outcome.error_code == "INVALID_FILE"
    assert "truncated" in (outcome.error_msg or "")


def test_a_claim_that_is_not_the_workers_is_lost_and_changes_nothing(bench: Bench) -> None:
    x = _wav(bench.tmp / "in.wav", 0.5)
    job_id = bench.job((bench.tmp / "in.wav").read_bytes(), x.shape[0])
    assert bench.run(job_id, owner="someone-else") == JobOutcome(Outcome.LOST)
    assert bench.run(job_id, attempt=2) == JobOutcome(Outcome.LOST)  # an older or newer claim
    row = bench.store.get_job(job_id)
    assert row is not None and row.lease_owner == OWNER and row.result_blob is None


def test_a_missing_upload_fails_the_job_with_internal(bench: Bench) -> None:
    x = _wav(bench.tmp / "in.wav", 0.5)
    job_id = bench.job((bench.tmp / "in.wav").read_bytes(), x.shape[0])
    bench.blobs.delete(f"uploads/{job_id}")
    outcome = bench.run(job_id)
    assert outcome.outcome is Outcome.FAILED and outcome.error_code == "INTERNAL", outcome
