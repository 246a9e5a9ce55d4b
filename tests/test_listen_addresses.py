"""Every listener serves every address its host name resolves to, as the gRPC port does.

``localhost`` often names 127.0.0.1 and ::1; a client may pick either. The gRPC port listens on each
(server/app.py, server/group.py); the health mirror, the metrics port and the gateway do the same
(``hushwire.settings.bind_all``). Here nss_wrapper makes ``localhost`` name both in the processes
under test, whatever this machine's /etc/hosts says, and each listener is asked on both.
"""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path

import grpc
import pytest
from conftest import HUSHWIRE, ROOT, localhost_twice, start_logged, start_server, stop_process
from grpc_health.v1 import health_pb2, health_pb2_grpc

ADDRESSES = ("127.0.0.1", "[::1]")


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.status, reply.read().decode()


def _port(log: str, what: str) -> int:
    """The port a listener logged for 127.0.0.1 (``<what> on http://127.0.0.1:PORT/...``)."""
    m = re.search(rf"{what} on http://127\.0\.0\.1:(\d+)/", log)
    assert m, f"no '{what} on http://127.0.0.1:...' line:\n{log}"
    return int(m.group(1))


@pytest.mark.parametrize("processes", ["1", "2"])
def test_health_mirror_and_metrics_serve_every_address(tmp_path: Path, processes: str) -> None:
    srv = start_server(tmp_path, "--host", "localhost", "--processes", processes, "--workers", "0",
                       "--health-http-host", "localhost", "--health-http-port", "0",
                       "--metrics-host", "localhost", "--metrics-port", "0", env=localhost_twice(tmp_path))
    try:
        mirror, metrics = _port(srv.log, "health mirror"), _port(srv.log, "metrics")
        for address in ADDRESSES:
            assert _get(f"http://{address}:{mirror}/readyz") == (200, _get(f"http://127.0.0.1:{mirror}/readyz")[1])
            status, body = _get(f"http://{address}:{metrics}/metrics")
            assert status == 200 and "hushwire_streams_total" in body, (address, body[:300])
    finally:
        assert srv.stop() == 0, srv.log


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_busy_metrics_port_is_a_one_line_error(tmp_path: Path, processes: str) -> None:
    """Bound before anything starts, like the gRPC and health ports: exit status 2 and one line, not a
    traceback from a server that had already started (and, in a group, a parent with no metrics)."""
    import subprocess

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([*HUSHWIRE, "serve", "--port", "0", "--data-dir", str(tmp_path), "--workers", "0",
                              "--processes", processes, "--metrics-port", str(port)],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert f"hushwire: --metrics-port: cannot listen on 127.0.0.1:{port}" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "listening on" not in out.stderr, out.stderr


@pytest.mark.parametrize("processes", ["1", "2"])
def test_an_address_the_machine_does_not_have_is_left_out(tmp_path: Path, processes: str) -> None:
    """``localhost`` listed with an address this machine lacks (::1 in a container with IPv6 off; here
    192.0.2.1, TEST-NET-1): the server starts on the addresses it has, as grpc itself does with a name,
    and says which it left out; it used to refuse to start."""
    srv = start_server(tmp_path, "--host", "localhost", "--processes", processes, "--workers", "0",
                       "--health-http-host", "localhost", "--health-http-port", "0",
                       env=localhost_twice(tmp_path, "192.0.2.1"))
    try:
        assert "localhost: 192.0.2.1 is not configured on this machine: listening on 127.0.0.1 only" in srv.log
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert _get(f"http://127.0.0.1:{_port(srv.log, 'health mirror')}/readyz")[0] == 200
    finally:
        assert srv.stop() == 0, srv.log


def test_gateway_serves_every_address(tmp_path: Path) -> None:
    # No gRPC server behind it: /healthz is the gateway's own liveness, answered without one.
    log_path = tmp_path / "gateway.log"
    proc, _ = start_logged(["gateway", "--host", "localhost", "--port", "0", "--grpc-target", "127.0.0.1:9"],
                           log_path, "gateway", env=localhost_twice(tmp_path))
    try:
        m = re.search(r"listening on http://localhost:(\d+)", log_path.read_text())
        assert m, log_path.read_text()
        for address in ADDRESSES:
            assert _get(f"http://{address}:{m.group(1)}/healthz")[0] == 200, address
    finally:
        assert stop_process(proc, "gateway") == 0, log_path.read_text()
