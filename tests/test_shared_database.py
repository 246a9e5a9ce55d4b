"""Two servers sharing one real PostgreSQL: a replica that dies mid-job loses its lease, and the other
finishes the job exactly once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import create_key, start_server
from pg_fixtures import PostgresCluster

from client import JobsClient
from client.jobs import STATUS_NAMES
from hushwire.v1 import jobs_pb2
from server.store import Store


@pytest.mark.slow
def test_a_dead_replicas_job_is_finished_once_by_the_survivor(tmp_path: Path, postgres: PostgresCluster) -> None:
    url = postgres.create_database()
    flags = ("--database-url", url, "--workers", "1", "--lease-seconds", "2")
    key = create_key(tmp_path, "--database-url", url)
    src = tmp_path / "long.wav"
    rng = np.random.default_rng(1)
    sf.write(str(src), (rng.standard_normal(48000 * 120) * 0.03).astype(np.float32), 48000)
    a = start_server(tmp_path, *flags)  # both replicas share the data dir: signing secret, key pepper, blobs
    b = None
    try:
        with JobsClient(a.target, key) as c:
            job_id = c.submit(src).job_id
            deadline = time.monotonic() + 60
            while (j := c.get(job_id)).status != jobs_pb2.JOB_STATUS_PROCESSING or j.progress < 0.05:
                assert j.status not in (jobs_pb2.JOB_STATUS_COMPLETED, jobs_pb2.JOB_STATUS_FAILED), j
                assert time.monotonic() < deadline, "the job never started on replica A"
                time.sleep(0.05)
        b = start_server(tmp_path, *flags)
        a.stop(sig=signal.SIGKILL)
        killed_at = time.monotonic()
        with JobsClient(b.target, key) as c:
            done = c.wait(job_id, timeout=180)
            assert STATUS_NAMES[done.status] == "completed", done.error
            _, path = c.download(job_id, tmp_path / "out.wav")
            assert sf.info(str(path)).frames == 48000 * 120
        assert time.monotonic() - killed_at > 1.0, "B finished before A's lease could have expired"
        assert f"job pre-processing job_id={job_id!r}" in b.log and "attempt=2" in b.log, b.log
        assert f"job completed job_id={job_id!r}" not in a.log
        store = Store(url)
        try:
            row = store.get_job(job_id)
            assert row is not None and row.attempts == 2 and row.lease_owner is None
            assert row.result_blob is not None and row.result_blob.endswith("-2")
            [(_, billed, _, completed)] = store.usage(1)
            assert completed == 1 and billed == pytest.approx(120.0)  # one job, billed once
        finally:
            store.close()
        finals = [p for p in (tmp_path / "blobs" / "results").iterdir() if not p.name.startswith(".")]
        assert [p.name for p in finals] == [Path(row.result_blob).name]  # A's partial result never got a name
    finally:
        if b is not None:
            assert b.stop() == 0, b.log
        a.stop(sig=signal.SIGKILL)
