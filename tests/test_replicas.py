"""Many replicas on shared stores behind HAProxy (issue #11): any replica finishes any job, exactly once;
results download wherever they were made; live streams move to a survivor; a drain leaves rotation.

Every test uses the module's ``cluster`` (tests/replica_fixtures.py): replicas ``a`` and ``b``, one
job worker each, 2 s leases, behind HAProxy running ``deploy/haproxy/grpc.cfg``, once on SQLite and a blob
folder and once on PostgreSQL and S3 (``store_urls``). A test that kills or
drains a replica starts it again before it ends, so the next test finds both up.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import free_port, scrape_metrics
from replica_fixtures import (
    DEPLOY,
    DEPLOY_TLS_DIR,
    HAPROXY,
    Cluster,
    Replica,
    start_gateways,
    start_haproxy,
    start_nginx,
)
from s3_fixtures import stored_blobs
from test_stream_resume import CHUNK, RATE, Feed, Reader, check_accounting

from client import EnhancerClient, JobsClient
from client.jobs import STATUS_NAMES
from hushwire.v1 import jobs_pb2
from server.backends import open_store
from server.config import ServerConfig

pytestmark = pytest.mark.slow


def _owner(c: Cluster, job_id: str, event: str = "job processing") -> Replica:
    """The replica whose log has ``event`` for ``job_id``."""
    found = [r for r in [*c.replicas, *c.extra] if any(e.get("job_id") == job_id for e in r.events(event))]
    assert len(found) == 1, f"{event} {job_id} logged by {[r.name for r in found]}"
    return found[0]


def _wait_for(what: str, cond: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _usage_jobs(c: Cluster) -> int:
    """Completed jobs billed in the shared store (whatever its engine), summed over the day rows."""
    cfg = ServerConfig(data_dir=c.work / "a", database_url=c.stores.database_url, blob_url=c.stores.blob_url,
                       key_pepper=c.env["HUSHWIRE_KEY_PEPPER"])
    store = open_store(cfg)
    try:
        return sum(row[3] for key in store.list_keys() for row in store.usage(key.key_id))
    finally:
        store.close()


def test_deploy_configs_are_valid_haproxy() -> None:
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy)")
    import subprocess

    # The configs with TLS need certificates in place: tests/test_replicas_tls.py checks them with its own.
    for cfg in sorted(c for c in DEPLOY.glob("*.cfg") if DEPLOY_TLS_DIR not in c.read_text()):
        out = subprocess.run([str(HAPROXY), "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"{cfg}:\n{out.stdout}{out.stderr}"


def test_a_job_submitted_to_one_replica_is_finished_by_another(cluster: Cluster, tmp_path: Path) -> None:
    intake = cluster.start_extra("intake", workers=0)  # takes jobs in, runs none
    src = tmp_path / "noise.wav"
    sf.write(str(src), np.random.default_rng(1).standard_normal((16000 * 3, 1)).astype(np.float32) * 0.05, 16000)
    with JobsClient(intake.target, cluster.key) as jobs:
        job_id = jobs.submit(src).job_id
        done = jobs.wait(job_id, timeout=120)
    assert STATUS_NAMES[done.status] == "completed", done
    assert any(e.get("job_id") == job_id for e in intake.events("job submitted"))
    assert not intake.events("job completed") and not intake.events("job processing")
    finisher = _owner(cluster, job_id, "job completed")
    assert finisher in cluster.replicas
    # Every replica answers for the job, and the result comes whole through the balancer.
    assert cluster.lb is not None
    with JobsClient(cluster.lb.target, cluster.key) as jobs:
        assert STATUS_NAMES[jobs.get(job_id).status] == "completed"
        info, data = jobs.download(job_id)
    assert isinstance(data, bytes) and info.file_name.endswith(".wav")
    assert intake.stop() == 0


def test_a_replica_killed_mid_job_leaves_it_to_the_survivor_exactly_once(cluster: Cluster, tmp_path: Path,
                                                                          request: pytest.FixtureRequest) -> None:
    assert cluster.lb is not None
    src = tmp_path / "long.wav"
    frames = 48000 * 60
    sf.write(str(src), np.random.default_rng(2).standard_normal((frames, 2)).astype(np.float32) * 0.05, 48000)
    billed_before = _usage_jobs(cluster)
    with JobsClient(cluster.lb.target, cluster.key) as jobs:
        job_id = jobs.submit(src).job_id

        def processing() -> bool:
            j = jobs.get(job_id)
            return j.status == jobs_pb2.JOB_STATUS_PROCESSING and j.progress > 0

        _wait_for("the job to make progress", processing, 120)
        victim = _owner(cluster, job_id)
        survivor = cluster.b if victim is cluster.a else cluster.a
        victim.kill()
        t_kill = time.monotonic()
        done = jobs.wait(job_id, timeout=240)
        assert STATUS_NAMES[done.status] == "completed", done
        info, data = jobs.download(job_id)
    assert isinstance(data, bytes)
    took = time.monotonic() - t_kill
    # The survivor took it over after the lease ran out, and it alone finished it.
    assert _owner(cluster, job_id, "job completed") is survivor
    assert any(e.get("job_id") == job_id for e in survivor.events("job processing"))
    assert not any(e.get("job_id") == job_id for e in victim.events("job completed"))
    assert took >= 1.0, "finished before the victim's lease could have expired"
    # Exactly once: one completed job billed, and one result with the input's frames.
    assert _usage_jobs(cluster) == billed_before + 1
    import io

    assert sf.info(io.BytesIO(data)).frames == frames
    results = [n for n in stored_blobs(request, cluster.stores.blob_url) if n.startswith(f"results/{job_id}")]
    assert len([n for n in results if not n.endswith(".tmp")]) == 1, results
    cluster.restart(victim)


def test_a_result_downloads_after_the_replica_that_made_it_is_gone(cluster: Cluster, tmp_path: Path) -> None:
    gws = start_gateways(cluster)
    try:
        src = tmp_path / "short.wav"
        x = np.random.default_rng(3).standard_normal((16000 * 2, 1)).astype(np.float32) * 0.05
        sf.write(str(src), x, 16000)
        with httpx.Client(base_url=gws.url, timeout=30, trust_env=False) as http:
            r = http.post("/enhance", headers={"Authorization": cluster.key},
                          files={"clip": ("short.wav", src.read_bytes(), "audio/wav")})
            assert r.status_code == 200, r.text
            job_id = r.json()["clip"]
            deadline = time.monotonic() + 120
            while (s := http.get(f"/stat/jobs/{job_id}", headers={"Authorization": cluster.key}).json()).get(
                    "job_status") != "completed":
                assert time.monotonic() < deadline and s.get("job_status") != "failed", s
                time.sleep(0.1)
            url = s["result"]
            assert url.startswith(gws.url + "/results/"), url
            maker = _owner(cluster, job_id, "job completed")
            maker.kill()
            # No header: the signed URL alone, through either gateway, to whichever replica is left.
            for _ in range(4):
                got = http.get(url)
                assert got.status_code == 200, got.text
                y, rate = sf.read(__import__("io").BytesIO(got.content), dtype="float32")
                assert rate == 16000 and y.shape[0] == x.shape[0]
            tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
            assert http.get(tampered).status_code == 404
        cluster.restart(maker)
    finally:
        gws.stop()


def test_a_live_stream_moves_to_the_survivor_when_its_replica_is_killed(cluster: Cluster) -> None:
    assert cluster.lb is not None
    before = cluster.stream_counts()
    feed = Feed()
    with EnhancerClient(cluster.lb.target, cluster.key, connect_timeout=30) as c:
        feed.put_chunks(10)
        live = c.stream(feed, RATE)
        delay = live.delay_samples
        reader = Reader(live)
        reader.wait_frames(5 * CHUNK)
        (victim,) = cluster.serving(before)
        survivor = cluster.b if victim is cluster.a else cluster.a
        victim.kill()
        try:
            # The caller keeps talking, a chunk every 20 ms, until output flows again from the
            # survivor. Through HAProxy the dead call still takes chunks until the proxy resets it:
            # those are lost (counted in frames_lost), so a fixed handful could all go that way.
            got, seed = reader.frames(), 1
            deadline = time.monotonic() + 30
            while reader.frames() <= got:
                assert reader.error is None, reader.error
                assert time.monotonic() < deadline, f"no output from the survivor within 30 s ({seed} chunks fed)"
                feed.put_chunks(1, seed=seed)
                seed += 1
                time.sleep(0.02)
            feed.put_chunks(5, seed=seed)
            feed.end()
            reader.thread.join(30)
        finally:
            feed.end()
            cluster.restart(victim)   # the next tests need both replicas, whatever happened here
    assert not reader.thread.is_alive(), "the stream hung"
    assert reader.error is None, reader.error
    ev = check_accounting(reader.outputs, feed.fed, delay)
    # Through HAProxy the loss shows as CANCELLED (measured); a direct connection gives UNAVAILABLE.
    assert ev.status == grpc.StatusCode.CANCELLED, ev
    assert ev.attempts >= 1 and ev.outage_s < 10
    assert len(survivor.events("stream opened")) == before[survivor.name] + 1


def test_a_draining_replica_leaves_rotation_first_and_finishes_its_streams(cluster: Cluster) -> None:
    assert cluster.lb is not None
    before = cluster.stream_counts()
    feed = Feed()
    with EnhancerClient(cluster.lb.target, cluster.key, connect_timeout=30) as c:
        feed.put_chunks(5)
        live = c.stream(feed, RATE)
        delay = live.delay_samples
        reader = Reader(live)
        reader.wait_frames(2 * CHUNK)
        (draining,) = cluster.serving(before)
        other = cluster.b if draining is cluster.a else cluster.a
        assert draining.ready_status() == 200
        assert draining.proc is not None
        draining.proc.send_signal(signal.SIGTERM)
        _wait_for("the health mirror to answer 503", lambda: draining.ready_status() == 503, 5)
        took = cluster.lb.wait_status(draining.name, "DOWN", timeout=10)
        assert took < 5, f"HAProxy took {took:.1f} s to take the draining replica out"
        # New streams all go to the other replica, and succeed.
        during = cluster.stream_counts()
        with EnhancerClient(cluster.lb.target, cluster.key) as c2:
            for _ in range(4):
                y = c2.enhance(np.full(1600, 0.01, np.float32), RATE)
                assert y.shape == (1600,)
        after = cluster.stream_counts()
        assert after[draining.name] == during[draining.name]
        assert after[other.name] == during[other.name] + 4
        # The open stream was left to finish on the draining replica.
        feed.put_chunks(5, seed=1)
        feed.end()
        reader.thread.join(30)
    assert not reader.thread.is_alive() and reader.error is None, reader.error
    assert not any(o.backend_lost for o in reader.outputs)
    assert reader.frames() == feed.fed + delay
    assert draining.proc.wait(40) == 0
    cluster.restart(draining)


def test_a_stream_refused_by_a_full_replica_is_retried_onto_another(cluster: Cluster, tmp_path: Path) -> None:
    """A full replica refuses new streams with OVERLOADED; the client tries again through the
    balancer, which sends the retry to a replica with room. Here the full one is ``--max-streams 0``
    beside ``b``, behind their own HAProxy (the shipped config, ``leastconn``: measured, 5 of the 6
    first tries went to the full replica). Once a full replica also leaves rotation (its health
    check), fewer tries reach it; what must hold is that every stream runs, on ``b``."""
    metrics = free_port()
    full = cluster.start_extra("full", "--max-streams", "0", "--metrics-port", str(metrics), workers=0)
    lb = start_haproxy(DEPLOY / "grpc.cfg", tmp_path, [(r.name, r.port, r.health_port) for r in (full, cluster.b)],
                       "haproxy-full")
    try:
        for rep in (full, cluster.b):
            lb.wait_status(rep.name, "UP")
        before = len(cluster.b.events("stream opened"))
        with EnhancerClient(lb.target, cluster.key, connect_timeout=30) as c:
            for _ in range(6):
                live = c.stream([np.full(CHUNK, 0.01, np.float32)] * 3, RATE)
                assert sum(o.audio.shape[0] for o in live) == 3 * CHUNK + live.delay_samples
                assert live.reconnects == []
        refused = scrape_metrics(metrics).get(("hushwire_errors_total", (("code", "OVERLOADED"),)), 0.0)
        assert refused >= 1, "the balancer never tried the full replica"  # some first tries went there ...
        assert len(cluster.b.events("stream opened")) == before + 6      # ... and every stream ran on b
        assert full.events("stream opened") == []
    finally:
        lb.stop()


def test_a_full_replica_leaves_live_rotation_only(cluster: Cluster, tmp_path: Path) -> None:
    """Admission control (server/admission.py) behind the shipped HAProxy config: a replica that cannot
    take one more live stream turns /readyz/live 503, so HAProxy's ``hushwire_live`` backend (every
    ``/hushwire.v1.Enhancer/`` call) takes it out while ``hushwire_grpc`` (jobs and the rest) keeps it;
    new streams all run on ``b`` without a single OVERLOADED try, and the full replica returns to
    live rotation once its stream ends. Its budget, a hundredth of a core, fits one stream only."""
    metrics = free_port()
    full = cluster.start_extra("livefull", "--live-cpu-budget", "0.01", "--metrics-port", str(metrics), workers=0)
    lb = start_haproxy(DEPLOY / "grpc.cfg", tmp_path, [(r.name, r.port, r.health_port) for r in (full, cluster.b)],
                       "haproxy-live")
    try:
        for rep in (full, cluster.b):
            lb.wait_status(rep.name, "UP", backend="hushwire_live")
        feed = Feed()
        with EnhancerClient(full.target, cluster.key, connect_timeout=30) as holder:
            feed.put_chunks(5)
            reader = Reader(holder.stream(feed, RATE))
            reader.wait_frames(CHUNK)
            lb.wait_status(full.name, "DOWN", backend="hushwire_live")
            assert lb.server_status("hushwire_grpc")[full.name] == "UP"   # still takes jobs
            before = len(cluster.b.events("stream opened"))
            with EnhancerClient(lb.target, cluster.key, connect_timeout=30) as c:
                for _ in range(6):
                    live = c.stream([np.full(CHUNK, 0.01, np.float32)] * 3, RATE)
                    assert sum(o.audio.shape[0] for o in live) == 3 * CHUNK + live.delay_samples
            assert len(cluster.b.events("stream opened")) == before + 6
            m = scrape_metrics(metrics)
            assert m.get(("hushwire_streams_refused_total", (("reason", "load"),)), 0.0) == 0   # none was tried there
            assert m[("hushwire_live_full", ())] == 1
            feed.put_chunks(2, seed=1)
            feed.end()
            reader.thread.join(30)
        assert reader.error is None, reader.error   # the admitted stream ran to its end
        lb.wait_status(full.name, "UP", backend="hushwire_live")
    finally:
        lb.stop()


def test_through_nginx_a_lost_replica_shows_as_internal_and_the_stream_resumes(cluster: Cluster) -> None:
    lb = start_nginx(cluster)
    try:
        before = cluster.stream_counts()
        feed = Feed()
        with EnhancerClient(lb.target, cluster.key, connect_timeout=30) as c:
            feed.put_chunks(10)
            live = c.stream(feed, RATE)
            delay = live.delay_samples
            reader = Reader(live)
            reader.wait_frames(5 * CHUNK)
            (victim,) = cluster.serving(before)
            victim.kill()
            try:
                feed.put_chunks(10, seed=1)
                feed.end()
                reader.thread.join(30)
            finally:
                feed.end()
                cluster.restart(victim)   # the next tests need both replicas, whatever happened here
        assert not reader.thread.is_alive(), "the stream hung"
        assert reader.error is None, reader.error
        ev = check_accounting(reader.outputs, feed.fed, delay)
        assert ev.status == grpc.StatusCode.INTERNAL, ev  # measured: nginx turns the lost backend into INTERNAL
    finally:
        lb.stop()


def test_an_idempotent_retry_through_another_replica_gets_the_same_reply(cluster: Cluster, tmp_path: Path) -> None:
    """The key lives in the shared database: a request through replica a's gateway, then its retry
    through replica b's, creates the jobs once and answers the same JSON; another request with the key
    is 409 on either."""
    from test_gateway import start_gateway

    gws = [start_gateway(tmp_path, rep.target) for rep in (cluster.a, cluster.b)]
    try:
        buf = __import__("io").BytesIO()
        sf.write(buf, np.random.default_rng(5).standard_normal(8000).astype(np.float32) * 0.05, 16000, format="WAV")
        files = [("clip", ("one.wav", buf.getvalue())), ("clip", ("two.wav", buf.getvalue()))]
        headers = {"Authorization": cluster.key, "Idempotency-Key": f"replicas-{time.monotonic_ns()}"}
        replies = []
        for gw in gws:
            with httpx.Client(base_url=gw.url, timeout=60, trust_env=False) as http:
                r = http.post("/enhance", headers=headers, files=files)
                assert r.status_code == 200, r.text
                replies.append(r.content)
                other = http.post("/enhance", headers=headers, files=files[:1])
                assert other.status_code == 409 and other.json()["error"]["code"] == "IDEMPOTENCY_CONFLICT"
        assert replies[0] == replies[1]
        ids = __import__("json").loads(replies[0])["clip"]
        submitted = [e["job_id"] for rep in cluster.replicas for e in rep.events("job submitted")]
        assert sorted(j for j in submitted if j in ids) == sorted(ids)   # each created once, on replica a
        assert all(any(e.get("job_id") == j for e in cluster.a.events("job submitted")) for j in ids)
    finally:
        for gw in gws:
            assert gw.stop() == 0, gw.log


def test_an_upload_with_a_bad_key_is_401_through_both_balancers(cluster: Cluster) -> None:
    """Issue #18: the server refused the key at once and reset the SubmitJob stream while the gateway was
    still sending the body, which HAProxy turned into CANCELLED without the trailer: 502 UPSTREAM_ERROR.
    The gateway now checks the key (Account.WhoAmI) before it streams anything."""
    gws = start_gateways(cluster)
    try:
        buf = __import__("io").BytesIO()
        sf.write(buf, np.zeros(16000 * 60, np.float32), 16000, format="WAV")   # 1.9 MB: many chunks in flight
        with httpx.Client(base_url=gws.url, timeout=60, trust_env=False) as http:
            bad = "hw_not-a-key"
            for headers in ({"Authorization": bad}, {"Authorization": bad, "Idempotency-Key": "x"}, {}):
                for _ in range(3):
                    r = http.post("/enhance", headers=headers, files={"f": ("a.wav", buf.getvalue(), "audio/wav")})
                    assert r.status_code == 401, r.text
                    assert r.json()["error"]["code"] == "API_KEY_NOT_FOUND"
    finally:
        gws.stop()


def test_a_grpc_upload_with_a_bad_key_through_haproxy_says_so(cluster: Cluster, tmp_path: Path) -> None:
    """The same reset reaches a gRPC client that streams SubmitJob through HAProxy as CANCELLED with no
    trailer; the client library then asks the server about the key and reports API_KEY_NOT_FOUND."""
    assert cluster.lb is not None
    src = tmp_path / "long.wav"
    sf.write(str(src), np.zeros(16000 * 60, np.float32), 16000)
    from client import HushwireClientError

    for _ in range(3):
        with JobsClient(cluster.lb.target, "hw_not-a-key") as jobs, pytest.raises(HushwireClientError) as info:
            jobs.submit(src)
        assert info.value.code == "API_KEY_NOT_FOUND", info.value
        assert info.value.status == grpc.StatusCode.UNAUTHENTICATED and "Unregistered API Key" in str(info.value)
