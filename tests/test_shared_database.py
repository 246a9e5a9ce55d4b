"""Servers on a real PostgreSQL: a replica that dies mid-job loses its lease and the other finishes
the job exactly once; a database outage is SERVICE_UNAVAILABLE, and the server recovers from it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from conftest import create_key, start_server
from pg_fixtures import PostgresCluster, find_pg_bin

from client import HushwireClientError, JobsClient
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
        # Kill A first, then start B: started the other way round, a slow start of B (a loaded machine)
        # let A finish the job before it was killed, and the test failed on its own race.
        a.stop(sig=signal.SIGKILL)
        killed_at = time.monotonic()
        b = start_server(tmp_path, *flags)
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


@pytest.mark.slow
def test_a_database_outage_is_service_unavailable_and_the_server_recovers(tmp_path: Path) -> None:
    """Its own cluster, so stopping it harms no other test."""
    bindir = find_pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)")
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        url = cluster.create_database()
        key = create_key(tmp_path, "--database-url", url)
        srv = start_server(tmp_path, "--database-url", url, "--workers", "1")
        src = tmp_path / "a.wav"
        sf.write(str(src), np.zeros(16000, np.float32), 16000)
        try:
            with JobsClient(srv.target, key, timeout=10) as c:
                first = c.wait(c.submit(src).job_id, timeout=60)
                assert STATUS_NAMES[first.status] == "completed"
                cluster.halt()
                for _ in range(3):  # the call that meets the break, then calls that cannot reconnect
                    with pytest.raises(HushwireClientError) as info:
                        c.get(first.job_id)
                    assert info.value.code == "SERVICE_UNAVAILABLE", info.value
                    assert info.value.status == grpc.StatusCode.UNAVAILABLE
                    assert "database is unavailable" in info.value.msg and url not in info.value.msg
                with JobsClient(srv.target, None) as anon, pytest.raises(HushwireClientError) as info:
                    anon.download(first.job_id, token=first.result.token)  # by result token, no key
                assert info.value.code == "SERVICE_UNAVAILABLE", info.value
                time.sleep(1.0)  # the job loop polls the database twice a second: let it fail too
                assert srv.proc.poll() is None, "the server died with its database"
                cluster.start()  # same port, same data
                deadline = time.monotonic() + 30
                while True:  # the first call after the restart may still meet the old, broken connection
                    try:
                        assert c.get(first.job_id).job_id == first.job_id
                        break
                    except HushwireClientError as err:
                        assert err.code == "SERVICE_UNAVAILABLE" and time.monotonic() < deadline, err
                        time.sleep(0.2)
                second = c.wait(c.submit(src).job_id, timeout=60)  # the job loop claims again
                assert STATUS_NAMES[second.status] == "completed"
            assert "cannot claim jobs" in srv.log and "claiming jobs again" in srv.log, srv.log
            assert f"database {url} (schema version" in srv.log
            assert "Traceback" not in srv.log, srv.log
        finally:
            assert srv.stop() == 0, srv.log
    finally:
        cluster.stop()
