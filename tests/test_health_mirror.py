"""``--health-http-port``: plain-HTTP readiness that mirrors grpc.health.v1 (server/health_http.py)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import HUSHWIRE, ROOT, create_key, free_port, run_cli
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_stream_resume import CHUNK, Feed, Reader

from client import EnhancerClient

_MIRROR = re.compile(r"health mirror on http://127\.0\.0\.1:(\d+)/readyz")
_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def _get(url: str, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


def _grpc_health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _wait_log(log: Path, pattern: re.Pattern[str], proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = pattern.search(log.read_text(errors="replace"))
        if m:
            return int(m.group(1))
        assert proc.poll() is None, log.read_text()
        time.sleep(0.01)
    raise AssertionError(f"no {pattern.pattern!r} in:\n{log.read_text()}")


@pytest.mark.slow
def test_the_mirror_follows_health_through_warm_up_serving_and_drain(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    log = tmp_path / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([*HUSHWIRE, "serve", "--port", "0", "--data-dir", str(tmp_path), "--workers", "2",
                                 "--health-http-port", "0", "--drain-seconds", "20"],
                                stdout=subprocess.DEVNULL, stderr=f, cwd=ROOT)
    try:
        mirror = _wait_log(log, _MIRROR, proc)
        readyz = f"http://127.0.0.1:{mirror}/readyz"
        first = _get(readyz)
        assert first == (503, b"NOT_SERVING\n"), first  # its job workers are still starting
        port = _wait_log(log, _LISTENING, proc)
        assert _get(readyz) == (200, b"SERVING\n")
        assert _grpc_health(port) == health_pb2.HealthCheckResponse.SERVING
        assert _get(f"http://127.0.0.1:{mirror}/healthz")[0] == 200
        assert _get(readyz, "HEAD") == (200, b"")
        assert _get(readyz, "POST")[0] == 405
        assert _get(f"http://127.0.0.1:{mirror}/metrics")[0] == 404

        feed = Feed()
        with EnhancerClient(f"127.0.0.1:{port}", key) as c:
            feed.put_chunks(3)
            live = c.stream(feed, 16000, resume=False)
            reader = Reader(live)
            reader.wait_frames(CHUNK)
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _get(readyz)[0] != 503:
                assert time.monotonic() < deadline, "the mirror never went 503 on SIGTERM"
                time.sleep(0.02)
            # Draining: both say NOT_SERVING while the open stream may still finish.
            assert _grpc_health(port) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert _get(f"http://127.0.0.1:{mirror}/healthz")[0] == 200
            feed.put_chunks(2, seed=1)
            feed.end()
            reader.thread.join(20)
        assert reader.error is None and reader.frames() == feed.fed + live.delay_samples
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_busy_health_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run_cli("serve", "--port", str(free_port()), "--data-dir", str(tmp_path), "--workers", "0",
                      "--health-http-port", str(port), check=False)
    assert out.returncode == 2, out.stderr
    assert f"--health-http-port: cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("value", ["70000", "-1", "http"])
def test_a_bad_health_port_is_refused(tmp_path: Path, value: str) -> None:
    out = run_cli("serve", "--port", "0", "--data-dir", str(tmp_path), "--health-http-port", value, check=False)
    assert out.returncode == 2 and "--health-http-port" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_health_port_from_environment_and_toml(tmp_path: Path) -> None:
    from hushwire.settings import resolve

    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nhealth_http_port = 8081\n[jobs]\nworkers = 0\n")
    assert resolve(["health_http_port", "workers"], {}, env={}, config_file=cfg) == {"health_http_port": 8081,
                                                                                     "workers": 0}
    assert resolve(["health_http_port"], {}, env={"HUSHWIRE_HEALTH_HTTP_PORT": "9000"})["health_http_port"] == 9000
    assert resolve(["health_http_port"], {}, env={})["health_http_port"] is None


def test_workers_zero_serves_but_runs_no_jobs(tmp_path: Path) -> None:
    from conftest import start_server

    key = create_key(tmp_path)
    srv = start_server(tmp_path, "--workers", "0")
    try:
        with EnhancerClient(srv.target, key) as c:
            assert c.enhance(np.zeros(1600, np.float32), 16000).shape == (1600,)
    finally:
        assert srv.stop() == 0


def test_calls_while_the_server_starts_are_refused_as_unavailable(tmp_path: Path) -> None:
    """Between binding its port and SERVING (the job workers' warm-up), a call gets UNAVAILABLE with
    SERVICE_UNAVAILABLE, so clients retry; it used to fail with UNKNOWN (KeyError)."""
    from client import JobsClient
    from client.errors import HushwireClientError

    key = create_key(tmp_path)
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([*HUSHWIRE, "serve", "--port", str(port), "--data-dir", str(tmp_path),
                                 "--workers", "2"], stdout=subprocess.DEVNULL, stderr=f, cwd=ROOT)
    refused, other = 0, []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # A fresh channel each time: a channel that failed to connect waits out a reconnect
            # backoff (1 s and more), which could skip the whole warm-up.
            with JobsClient(f"127.0.0.1:{port}", key, timeout=5) as jobs:
                try:
                    list(jobs.list())
                    break
                except HushwireClientError as err:
                    if err.code == "SERVICE_UNAVAILABLE":
                        refused += 1
                        assert err.status == grpc.StatusCode.UNAVAILABLE and "starting up" in err.msg
                    elif err.status != grpc.StatusCode.UNAVAILABLE or err.code is not None:
                        other.append(err)  # UNAVAILABLE without a code: the port is not bound yet
            time.sleep(0.01)
        else:
            raise AssertionError("the server never served")
        assert not other, other
        assert refused > 0, "no call landed in the warm-up window"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
