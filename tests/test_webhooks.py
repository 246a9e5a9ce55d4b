"""Signed job webhooks (issue #19): real servers, a real gateway, and real HTTP receivers on loopback.

The receivers are ``http.server`` servers in threads, each answering from a script (a status, a
redirect, or holding the request until told); the servers allow them explicitly with
``--webhook-allow``. Retries are fast here (``--webhook-base-delay-seconds 0.2``). One test runs the
receiver example printed in the OpenAPI document, as a user would copy it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import ServerProcess, create_key, free_port, run_cli, scrape_metrics, start_server, white_noise_file
from test_gateway import GatewayProcess, start_gateway
from tls_fixtures import PKI, pki  # noqa: F401  (fixture)

from client import HushwireClientError, JobsClient
from gateway.openapi import RECEIVER_EXAMPLE

PUBLIC_URL = "https://hushwire.example.org"
STAT_KEYS = {"model", "app_id", "billed_time", "timestamp", "mod_time", "file_name", "job_id", "uid", "file_key",
             "job_status", "progress"}


# -- a scripted receiver --------------------------------------------------------------------------------


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """Answers each POST with the next scripted reply: an int status, ("redirect", url), or "hold"
    (keep the request open until :meth:`release`); 200 once the script is used up."""

    server: ThreadingHTTPServer
    script: list[Any] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def release(self) -> None:
        self.released.set()

    def wait_hits(self, n: int, timeout: float = 30) -> list[Hit]:
        deadline = time.monotonic() + timeout
        while len(self.hits) < n:
            assert time.monotonic() < deadline, f"only {len(self.hits)} of {n} deliveries arrived"
            time.sleep(0.02)
        return self.hits


def _receiver() -> Receiver:
    rec: Receiver

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            rec.hits.append(Hit(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()))
            reply = rec.script.pop(0) if rec.script else 200
            if reply == "hold":
                rec.released.wait(60)
                reply = 200
            if isinstance(reply, tuple):
                self.send_response(302)
                self.send_header("Location", reply[1])
            else:
                self.send_response(reply)
            self.send_header("Content-Length", "0")
            self.end_headers()

    rec = Receiver(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    threading.Thread(target=rec.server.serve_forever, daemon=True).start()
    return rec


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = _receiver()
    yield rec
    rec.release()
    rec.server.shutdown()
    rec.server.server_close()


def verify(hit: Hit, *secrets: str) -> dict[str, Any]:
    """Check ``Hushwire-Signature`` as a receiver must, with each of ``secrets``; returns the JSON body."""
    fields = [f.split("=", 1) for f in hit.headers["hushwire-signature"].split(",")]
    t = int(dict(fields)["t"])
    assert abs(time.time() - t) < 60, t
    sigs = [v for k, v in fields if k == "v1"]
    assert len(sigs) == len(secrets), (sigs, secrets)
    for secret in secrets:
        mac = hmac.new(secret.encode(), f"{t}.".encode() + hit.body, hashlib.sha256).hexdigest()
        assert mac in sigs, f"no v1= signature by {secret[:10]}..."
    assert hit.headers["content-type"] == "application/json"
    body: dict[str, Any] = json.loads(hit.body)
    return body


# -- servers ---------------------------------------------------------------------------------------------


@dataclass
class Hooked:
    srv: ServerProcess
    key: str
    uid: int
    metrics_port: int

    def secret(self, *extra: str) -> str:
        return run_cli("keys", "webhook-secret", "--user", str(self.uid), "--data-dir", str(self.srv.data_dir),
                       *extra).stdout.strip().splitlines()[-1]


def _start(data: Path, *extra: str) -> Hooked:
    metrics_port = free_port()
    srv = start_server(data, "--workers", "1", "--webhook-allow", "127.0.0.1/32", "--public-url", PUBLIC_URL,
                       "--webhook-base-delay-seconds", "0.2", "--metrics-port", str(metrics_port),
                       "--log-format", "json", *extra)
    out = run_cli("keys", "create", "--name", "hooks", "--data-dir", str(data))
    uid = int(re.search(r"uid=(\d+)", out.stderr).group(1))  # type: ignore[union-attr]
    return Hooked(srv, out.stdout.strip().splitlines()[-1], uid, metrics_port)


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hooked]:
    h = _start(tmp_path_factory.mktemp("hooks"))
    yield h
    assert h.srv.stop() == 0, h.srv.log


def _wav(path: Path, seconds: float = 1.0) -> Path:
    white_noise_file(path, seconds=seconds)
    return path


def _callback(jobs: JobsClient, job_id: str, state: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while (cb := jobs.get(job_id).callback).state != state:
        assert time.monotonic() < deadline, f"callback state {cb.state!r}, waited for {state!r}: {cb}"
        time.sleep(0.05)
    return cb


# -- tests -----------------------------------------------------------------------------------------------


def test_a_signed_delivery_retried_after_a_500(hooked: Hooked, receiver: Receiver, tmp_path: Path) -> None:
    secret = hooked.secret()
    assert secret.startswith("whsec_") and hooked.secret() == secret   # stable once created
    receiver.script = [500]
    with JobsClient(hooked.srv.target, hooked.key) as jobs:
        job = jobs.submit(_wav(tmp_path / "a.wav"), callback_url=receiver.url + "/hooks/hushwire?team=a")
        assert job.callback.state == "waiting" and job.callback.url.endswith("?team=a")
        first, second = receiver.wait_hits(2)
        cb = _callback(jobs, job.job_id, "delivered")
    assert first.path == second.path == "/hooks/hushwire?team=a"
    # One event, two attempts: the same id, each signed afresh, the retry within the first delay's range.
    assert first.headers["hushwire-event-id"] == second.headers["hushwire-event-id"] == cb.event_id
    assert 0.05 < second.at - first.at < 30
    for hit in (first, second):
        body = verify(hit, secret)
        assert STAT_KEYS <= set(body) and "callback" not in body
        assert body["job_id"] == job.job_id and body["job_status"] == "completed" and body["uid"] == hooked.uid
        assert body["result"].startswith(f"{PUBLIC_URL}/results/{job.job_id}?expires=")
    assert cb.attempts == 2 and cb.last_status_code == 200 and not cb.last_error
    metrics = scrape_metrics(hooked.metrics_port)
    assert metrics[("hushwire_webhook_attempts_total", (("outcome", "failed"),))] >= 1
    assert metrics[("hushwire_webhooks_delivered_total", ())] >= 1
    assert ("hushwire_webhooks_pending", ()) in metrics


def test_a_failed_job_is_delivered_too(hooked: Hooked, receiver: Receiver, tmp_path: Path) -> None:
    full = tmp_path / "full.flac"
    sf.write(str(full), np.random.default_rng(1).standard_normal(64000).astype(np.float32) * 0.05, 16000,
             format="FLAC")
    cut = tmp_path / "cut.flac"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    with JobsClient(hooked.srv.target, hooked.key) as jobs:
        job = jobs.submit(cut, callback_url=receiver.url + "/failed")
        (hit,) = receiver.wait_hits(1)
        _callback(jobs, job.job_id, "delivered")
    body = verify(hit, hooked.secret())
    assert body["job_status"] == "failed" and body["error"]["code"] == "INVALID_FILE" and "result" not in body


def test_a_redirect_is_not_followed(hooked: Hooked, receiver: Receiver, tmp_path: Path) -> None:
    elsewhere = _receiver()
    try:
        receiver.script = [("redirect", elsewhere.url + "/stolen")] * 3
        with JobsClient(hooked.srv.target, hooked.key) as jobs:
            job = jobs.submit(_wav(tmp_path / "r.wav"), callback_url=receiver.url + "/moved")
            receiver.wait_hits(2)
            cb = jobs.get(job.job_id).callback
        assert cb.state == "pending" and cb.last_status_code == 302 and "redirect" in cb.last_error, cb
        assert not elsewhere.hits
    finally:
        elsewhere.server.shutdown()
        elsewhere.server.server_close()


def test_forbidden_callback_urls_are_refused_at_submit(tmp_path: Path) -> None:
    """The default policy (no --webhook-allow): public addresses only, checked after DNS."""
    data = tmp_path / "strict"
    data.mkdir()
    srv = start_server(data, "--workers", "0")
    try:
        key = create_key(data)
        src = _wav(tmp_path / "x.wav", 0.2)
        refused = {
            "http://169.254.169.254/latest/meta-data/": "link-local",
            "http://10.0.0.1/hook": "not a public address",
            f"http://localhost:{free_port()}/hook": "loopback",      # a host name that resolves to loopback
            "http://[::1]/hook": "loopback",
            f"http://127.0.0.1:{srv.port}/": "own port",
            "ftp://example.org/hook": "http:// or https://",
            "http://user:pw@example.org/": "user info",
        }
        with JobsClient(srv.target, key) as jobs:
            for url, why in refused.items():
                with pytest.raises(HushwireClientError) as err:
                    jobs.submit(src, callback_url=url)
                assert err.value.code == "INVALID_REQUEST", (url, err.value)
                assert why.split()[0] in err.value.msg or why in err.value.msg, (url, err.value.msg)
            assert not list(jobs.list())   # nothing was stored
    finally:
        assert srv.stop() == 0, srv.log


def test_delivery_survives_a_sigkill_between_completion_and_delivery(tmp_path: Path, receiver: Receiver) -> None:
    data = tmp_path / "killed"
    data.mkdir()
    h = _start(data)
    receiver.script = ["hold"]
    try:
        with JobsClient(h.srv.target, h.key) as jobs:
            job = jobs.submit(_wav(tmp_path / "k.wav"), callback_url=receiver.url + "/k")
        receiver.wait_hits(1)            # the job completed; its delivery is in flight
        h.srv.proc.kill()
        h.srv.proc.wait(10)
        receiver.release()
        srv2 = start_server(data, "--workers", "1", "--webhook-allow", "127.0.0.1/32",
                            "--webhook-base-delay-seconds", "0.2")
        try:
            first, second = receiver.wait_hits(2)
            with JobsClient(srv2.target, h.key) as jobs:
                cb = _callback(jobs, job.job_id, "delivered")
        finally:
            assert srv2.stop() == 0, srv2.log
    finally:
        if h.srv.proc.poll() is None:
            h.srv.stop()
    assert first.headers["hushwire-event-id"] == second.headers["hushwire-event-id"] == cb.event_id
    body = verify(second, h.secret())
    assert body["job_id"] == job.job_id and body["job_status"] == "completed"
    assert "result" not in body     # the restarted server was given no --public-url


def test_rest_callback_field_secret_rotation_and_the_documented_receiver(hooked: Hooked, tmp_path: Path) -> None:
    gw: GatewayProcess = start_gateway(hooked.srv.data_dir, hooked.srv.target)
    port = free_port()
    example = tmp_path / "receiver.py"
    try:
        auth = {"Authorization": hooked.key}
        with httpx.Client(base_url=gw.url, timeout=30, trust_env=False) as http:
            got = http.get("/me/webhook-secret", headers=auth)
            old = got.json()
            assert old == {"secret": hooked.secret(), "previous_valid_until": None}
            assert got.headers["cache-control"] == "no-store"   # a secret: no cache may keep it
            rotated = http.post("/me/webhook-secret", headers=auth)
            assert rotated.headers["cache-control"] == "no-store"
            new = rotated.json()
            assert new["secret"] != old["secret"] and new["secret"] == hooked.secret()
            assert abs(new["previous_valid_until"] - (time.time() + 86400)) < 120
            assert http.get("/me/webhook-secret").status_code == 401
            # The OpenAPI document's receiver, run as printed (with its secret and port filled in).
            doc = http.get("/openapi.json").json()
            assert RECEIVER_EXAMPLE in doc["info"]["description"]
            assert "callback_url" in json.dumps(doc["paths"]["/enhance"]["post"]["requestBody"])
            example.write_text(RECEIVER_EXAMPLE.replace('b"whsec_..."', repr(old["secret"].encode()))
                               .replace("8000", str(port)))
            proc = subprocess.Popen([sys.executable, str(example)], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
            try:
                lines: queue.Queue[str] = queue.Queue()
                threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
                # A refused URL refuses the whole request, and no job is left.
                bad = http.post("/enhance", headers=auth, data={"callback_url": "http://10.0.0.1/x"},
                                files={"f": ("a.wav", _wav(tmp_path / "a.wav", 0.2).read_bytes(), "audio/wav")})
                assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_REQUEST", bad.text
                r = http.post("/enhance", headers=auth, data={"callback_url": f"http://127.0.0.1:{port}/hook"},
                              files={"f": ("b.wav", _wav(tmp_path / "b.wav").read_bytes(), "audio/wav")})
                assert r.status_code == 200, r.text
                job_id = r.json()["f"]
                # Signed by the new secret and the previous one: the example (old secret) accepts it.
                assert lines.get(timeout=60).split() == [lines_event_id(http, job_id, auth), "completed"]
                stat = http.get(f"/stat/jobs/{job_id}", headers=auth).json()
                assert stat["callback"]["state"] == "delivered" and stat["callback"]["last_status_code"] == 204
                # The header carries both signatures: by the new secret and by the previous one.
                rec = _receiver()
                try:
                    with JobsClient(hooked.srv.target, hooked.key) as jobs:
                        jobs.submit(_wav(tmp_path / "c.wav", 0.2), callback_url=rec.url + "/both")
                    (hit,) = rec.wait_hits(1)
                    verify(hit, new["secret"], old["secret"])
                finally:
                    rec.server.shutdown()
                    rec.server.server_close()
            finally:
                proc.terminate()
                proc.wait(10)
                assert proc.stdout is not None
                proc.stdout.close()
    finally:
        assert gw.stop() == 0, gw.log


def lines_event_id(http: httpx.Client, job_id: str, auth: dict[str, str]) -> str:
    deadline = time.monotonic() + 30
    while (cb := http.get(f"/stat/jobs/{job_id}", headers=auth).json().get("callback", {})).get("state") != \
            "delivered":
        assert time.monotonic() < deadline, cb
        time.sleep(0.05)
    return str(cb["event_id"])


@pytest.mark.slow
def test_a_stopping_replica_hands_its_delivery_to_another(request: pytest.FixtureRequest, tmp_path: Path,
                                                          receiver: Receiver) -> None:
    """Two replicas on one PostgreSQL database: the one whose attempt is cut short by its drain gives
    the delivery back, and the other one makes it (any replica delivers)."""
    from pg_fixtures import fresh_database_url

    url = fresh_database_url(request, "postgresql", tmp_path)
    env = {**os.environ, "HUSHWIRE_KEY_PEPPER": "pepper-" + "x" * 30, "HUSHWIRE_SIGNING_SECRET": "s" * 40}
    common = ["--database-url", url, "--webhook-allow", "127.0.0.1/32", "--webhook-base-delay-seconds", "0.2",
              "--log-format", "json"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = start_server(tmp_path / "a", "--workers", "1", *common, env=env)
    b = None
    try:
        key = run_cli("keys", "create", "--data-dir", str(tmp_path / "a"), "--database-url", url,
                      env=env).stdout.strip().splitlines()[-1]
        receiver.script = ["hold"]
        with JobsClient(a.target, key) as jobs:
            job = jobs.submit(_wav(tmp_path / "h.wav"), callback_url=receiver.url + "/handover")
        receiver.wait_hits(1)                       # a's attempt, held open by the receiver
        b = start_server(tmp_path / "b", "--workers", "0", *common, env=env)
        time.sleep(1.5)                             # b polls the outbox, but a holds the delivery's lease
        assert len(receiver.hits) == 1
        assert a.stop() == 0, a.log                 # a's drain cuts its attempt short and gives the row back
        first, second = receiver.wait_hits(2, timeout=15)
        assert first.headers["hushwire-event-id"] == second.headers["hushwire-event-id"]
        with JobsClient(b.target, key) as jobs:
            cb = _callback(jobs, job.job_id, "delivered")
        assert cb.attempts == 1   # the attempt a never finished is not counted
        delivered = [json.loads(x) for x in b.log.splitlines() if '"webhook attempt"' in x]
        assert [(e["job_id"], e["state"]) for e in delivered] == [(job.job_id, "delivered")], b.log
    finally:
        receiver.release()
        if a.proc.poll() is None:
            a.stop()
        if b is not None:
            assert b.stop() == 0, b.log


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hooked]:
    """Gives up a delivery after 1.5 s."""
    h = _start(tmp_path_factory.mktemp("impatient"), "--webhook-max-age-seconds", "1.5")
    yield h
    assert h.srv.stop() == 0, h.srv.log


def test_a_delivery_is_given_up_after_the_maximum_age(impatient: Hooked, receiver: Receiver,
                                                      tmp_path: Path) -> None:
    receiver.script = [503] * 100
    with JobsClient(impatient.srv.target, impatient.key) as jobs:
        job = jobs.submit(_wav(tmp_path / "g.wav", 0.3), callback_url=receiver.url + "/down")
        cb = _callback(jobs, job.job_id, "failed")
    assert cb.attempts >= 2 and cb.last_status_code == 503 and "given up" in cb.last_error, cb
    attempts = len(receiver.hits)
    time.sleep(1.0)
    assert len(receiver.hits) == attempts     # no more attempts
    assert scrape_metrics(impatient.metrics_port)[("hushwire_webhooks_given_up_total", ())] >= 1


def test_only_the_start_of_a_long_answer_is_read(impatient: Hooked, tmp_path: Path) -> None:
    """A receiver answering 200 with 64 MiB: the delivery counts, and the server stops reading early."""
    pushed: list[int] = []

    class Chatty(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            total = 64 * 2**20
            self.send_response(200)
            self.send_header("Content-Length", str(total))
            self.end_headers()
            sent = 0
            try:
                while sent < total:
                    self.wfile.write(b"x" * 65536)
                    sent += 65536
            except OSError:
                pass
            pushed.append(sent)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Chatty)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with JobsClient(impatient.srv.target, impatient.key) as jobs:
            job = jobs.submit(_wav(tmp_path / "c.wav", 0.3),
                              callback_url=f"http://127.0.0.1:{server.server_address[1]}/chatty")
            cb = _callback(jobs, job.job_id, "delivered")
        deadline = time.monotonic() + 10
        while not pushed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cb.last_status_code == 200 and cb.attempts == 1
        assert pushed and pushed[0] < 64 * 2**20, pushed   # the server hung up long before the end
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_an_attempt_without_an_answer_ends_after_ten_seconds(impatient: Hooked, receiver: Receiver,
                                                            tmp_path: Path) -> None:
    receiver.script = ["hold"]       # the receiver takes the request and never answers (until teardown)
    with JobsClient(impatient.srv.target, impatient.key) as jobs:
        job = jobs.submit(_wav(tmp_path / "t.wav", 0.3), callback_url=receiver.url + "/silent")
        receiver.wait_hits(1)
        t0 = time.monotonic()
        cb = _callback(jobs, job.job_id, "failed", timeout=30)   # too old by then: given up at once
    took = time.monotonic() - t0
    assert 9.0 < took < 15.0, took
    assert cb.last_error.startswith("no answer within 10 s") and cb.last_status_code == 0, cb


def test_finished_deliveries_are_purged_and_pending_ones_kept(tmp_path: Path) -> None:
    """The store side of "outbox rows are kept 7 days" (the deliverer purges what is older, hourly)."""
    from server.store import Store
    from server.store.webhooks import enqueue_webhook

    store = Store(tmp_path / "hw.db", b"pepper")
    try:
        uid = store.create_user("u")
        with store._tx() as db:   # as finish_job does, in the transaction that ends a job
            enqueue_webhook(db, "job-a", uid, "http://198.51.100.7/a", time.time())
            enqueue_webhook(db, "job-b", uid, "http://198.51.100.7/b", time.time())
        claimed = store.claim_webhooks("me", 30, 10)
        assert {r.job_id for r in claimed} == {"job-a", "job-b"}
        assert store.claim_webhooks("other", 30, 10) == []          # leased: nobody else takes them
        done = next(r for r in claimed if r.job_id == "job-a")
        assert store.webhook_attempted(done.event_id, "me", state="delivered", status=200, error=None,
                                       next_attempt_at=None)
        assert not store.webhook_attempted(done.event_id, "other", state="failed", status=None, error="x",
                                           next_attempt_at=None)   # not its lease
        assert store.release_webhook_leases("me") == 1              # job-b's, cut short
        assert [r.job_id for r in store.claim_webhooks("other", 30, 10)] == ["job-b"]
        assert store.purge_webhooks(time.time() - 7 * 86400) == 0    # delivered just now: kept
        assert store.purge_webhooks(time.time() + 1) == 1            # a week later: gone
        assert store.webhook_of("job-a") is None and store.webhook_of("job-b") is not None
        assert store.webhooks_pending() == 1
    finally:
        store.close()


def test_the_allow_list_forms_and_the_rotation_grace() -> None:
    """--webhook-allow's three forms, checked after resolution (IP literals here: no DNS needed)."""
    import asyncio

    from server.store.webhooks import WebhookSecrets
    from server.webhooks import WebhookPolicy, WebhookRefused

    def allowed(policy: WebhookPolicy, url: str) -> bool:
        try:
            asyncio.run(policy.check(url))
            return True
        except WebhookRefused:
            return False

    default = WebhookPolicy()
    assert allowed(default, "https://198.51.100.20/hook") is False      # TEST-NET-2: reserved, not global
    assert allowed(default, "https://8.8.8.8/hook") is True
    assert not allowed(default, "http://[fe80::1]/") and not allowed(default, "http://100.64.0.1/")
    assert not allowed(default, "http://[::ffff:127.0.0.1]/")           # loopback, IPv4-mapped
    listed = WebhookPolicy(["10.20.0.0/16", "127.0.0.1:9999", "[::1]:8443"], own_ports=[50051])
    assert allowed(listed, "http://10.20.3.4/x") and not allowed(listed, "http://10.21.0.1/x")
    assert allowed(listed, "http://127.0.0.1:9999/") and not allowed(listed, "http://127.0.0.1:9998/")
    assert allowed(listed, "https://[::1]:8443/") and not allowed(listed, "https://[::1]:8444/")
    assert not allowed(listed, "https://8.8.8.8/")                      # a list replaces the public rule
    assert not allowed(WebhookPolicy(["127.0.0.0/8"], own_ports=[50051]), "http://127.0.0.1:50051/")
    with pytest.raises(ValueError):
        WebhookPolicy(["10.0.0.0/33"])
    # Two signing keys during the grace after a rotation, one after it.
    s = WebhookSecrets("new", "old", previous_valid_until=1000.0)
    assert s.signing_keys(999.0) == ["new", "old"] and s.signing_keys(1000.0) == ["new"]


def test_ipv6_forms_of_a_forbidden_ipv4_address_are_refused() -> None:
    """NAT64 (64:ff9b::/96) and 6to4 (2002::/16) addresses reach the IPv4 address they carry."""
    import asyncio

    from server.webhooks import WebhookPolicy, WebhookRefused

    policy = WebhookPolicy()
    for url in ("http://[64:ff9b::a9fe:a9fe]/", "http://[64:ff9b::a00:1]/", "http://[64:ff9b::7f00:1]/",
                "http://[2002:a00:1::1]/", "http://[2002:7f00:1::1]/"):
        with pytest.raises(WebhookRefused, match="not a public address|link-local|loopback"):
            asyncio.run(policy.check(url))
    assert asyncio.run(policy.check("http://[64:ff9b::808:808]/")).addresses == ("64:ff9b::808:808",)
    listed = WebhookPolicy(["10.20.0.0/16"])
    asyncio.run(listed.check("http://[64:ff9b::a14:304]/"))          # 10.20.3.4, listed
    with pytest.raises(WebhookRefused, match="not in --webhook-allow"):
        asyncio.run(listed.check("http://[64:ff9b::a15:1]/"))       # 10.21.0.1


def test_a_refusal_does_not_say_what_a_host_name_resolves_to() -> None:
    """Refusals reach the client (400 at submit, the job's callback state later): they name the kind of
    address, never the address, so callback URLs cannot map the server's internal DNS."""
    import asyncio

    from server.webhooks import WebhookPolicy, WebhookRefused

    with pytest.raises(WebhookRefused) as err:
        asyncio.run(WebhookPolicy().check("http://localhost:9/hook"))
    assert "loopback" in str(err.value)
    assert "127.0.0.1" not in str(err.value) and "::1" not in str(err.value), err.value


def test_callback_hosts_resolve_outside_the_default_executor() -> None:
    """A lookup that hangs (a DNS server that never answers) must not hold the loop's default executor,
    which carries the uploads' and downloads' file I/O; nor may a busy default executor stall lookups."""
    import asyncio
    import concurrent.futures

    from server.webhooks import WebhookPolicy

    async def main() -> float:
        busy = threading.Event()
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
        blocker = loop.run_in_executor(None, busy.wait, 30)   # the default executor's only thread, held
        try:
            t0 = time.monotonic()
            target = await WebhookPolicy(["::1/128"]).check("http://[::1]:9/")
            assert target.addresses == ("::1",)
            return time.monotonic() - t0
        finally:
            busy.set()
            await blocker

    assert asyncio.run(main()) < 2.0


def test_an_https_receiver_is_verified(impatient: Hooked, tmp_path: Path, pki: PKI) -> None:  # noqa: F811
    """The connection goes to the checked address, but TLS still checks the URL's host against a trusted
    CA: a receiver whose certificate the server does not trust gets nothing (and the job says why)."""
    import ssl

    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki.server.cert), str(pki.server.key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with JobsClient(impatient.srv.target, impatient.key) as jobs:
            job = jobs.submit(_wav(tmp_path / "s.wav", 0.3),
                              callback_url=f"https://127.0.0.1:{server.server_address[1]}/tls")
            cb = _callback(jobs, job.job_id, "failed")
        assert "CERTIFICATE_VERIFY_FAILED" in cb.last_error and not hits, cb
    finally:
        server.shutdown()
        server.server_close()
