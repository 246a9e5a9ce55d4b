"""TLS and mutual TLS on every hop (issue #19): the gRPC server, the client library and commands, and
the gateway (HTTPS in front, TLS to the server behind).

Real parts only: ``hushwire serve`` and ``hushwire gateway`` subprocesses with certificates from a
throwaway CA (tests/tls_fixtures.py), real clients, real handshakes. Which certificate a server
presents is read from a handshake made with the ``ssl`` module, so a rotation is seen as a client
sees it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import ServerProcess, create_key, run_cli, start_server, white_noise_file
from test_gateway import GatewayProcess, start_gateway
from test_mic import audio_home  # noqa: F401  (fixture: JACK's dummy driver behind ALSA file devices)
from test_stream_resume import CHUNK, RATE, Feed, Reader
from tls_fixtures import PKI, Leaf, pki  # noqa: F401  (fixture)
from websockets.sync.client import connect as ws_connect

from client import EnhancerClient, HushwireClientError, JobsClient
from client.jobs import STATUS_NAMES
from client.stream import AsyncEnhancerClient

RELOADED = "TLS certificate reloaded"


def served_certificate(port: int, ca: Path) -> bytes:
    """The DER certificate a new TLS connection to ``127.0.0.1:port`` gets (checked against ``ca``)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def events(srv: ServerProcess, name: str) -> list[dict[str, Any]]:
    out = []
    for line in srv.log.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if rec.get("event") == name or str(rec.get("msg", "")).startswith(name):
                out.append(rec)
    return out


def wait_until(what: str, cond: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[ServerProcess]:  # noqa: F811
    """TLS only (no client certificates), on copies of the server's files that the rotation test replaces."""
    data = tmp_path_factory.mktemp("tls-data")
    cert, key = data / "live.crt", data / "live.key"
    pki.server.install(cert, key)
    srv = start_server(data, "--tls-cert", str(cert), "--tls-key", str(key), "--workers", "1",
                       "--log-format", "json")
    yield srv
    assert srv.stop() == 0, srv.log


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[ServerProcess]:  # noqa: F811
    """Mutual TLS, configured through the environment this time (HUSHWIRE_TLS_*)."""
    data = tmp_path_factory.mktemp("mtls-data")
    env = {**os.environ, "HUSHWIRE_TLS_CERT": str(pki.server.cert), "HUSHWIRE_TLS_KEY": str(pki.server.key),
           "HUSHWIRE_TLS_CLIENT_CA": str(pki.ca.path)}
    srv = start_server(data, "--workers", "1", "--log-format", "json", env=env)
    yield srv
    assert srv.stop() == 0, srv.log


@pytest.fixture(scope="module")
def tls_key(tls_server: ServerProcess) -> str:
    return create_key(tls_server.data_dir, "--name", "tls")


@pytest.fixture(scope="module")
def mtls_key(mtls_server: ServerProcess) -> str:
    return create_key(mtls_server.data_dir, "--name", "mtls")


def _noise(seconds: float = 0.5) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(int(RATE * seconds)) * 0.05).astype(np.float32)


# -- the gRPC server -----------------------------------------------------------------------------------


def test_a_stream_and_a_job_over_tls(tls_server: ServerProcess, tls_key: str, pki: PKI,  # noqa: F811
                                     tmp_path: Path) -> None:
    assert f"listening on 127.0.0.1:{tls_server.port} (TLS)" in tls_server.log
    x = _noise()
    with EnhancerClient(tls_server.target, tls_key, tls_ca=str(pki.ca.path)) as c:
        y = c.enhance(x, RATE)
    assert y.shape == x.shape and np.all(np.isfinite(y))

    async def via_asyncio() -> np.ndarray:
        async with AsyncEnhancerClient(tls_server.target, tls_key, tls_ca=str(pki.ca.path)) as ac:
            return await ac.enhance(x, RATE)

    import asyncio

    np.testing.assert_allclose(asyncio.run(via_asyncio()), y, atol=1e-6)
    src = tmp_path / "in.wav"
    white_noise_file(src, seconds=1.0)
    with JobsClient(tls_server.target, tls_key, tls_ca=str(pki.ca.path)) as jobs:
        job = jobs.submit(src)
        done = jobs.wait(job.job_id, timeout=60)
        assert STATUS_NAMES[done.status] == "completed", done
        _, data = jobs.download(job.job_id)
    assert isinstance(data, bytes) and sf.info(__import__("io").BytesIO(data)).frames == 16000
    # No client certificate on this server: nothing to log.
    assert all("client_subject" not in e for e in events(tls_server, "stream opened"))


def test_a_plaintext_client_is_refused(tls_server: ServerProcess, tls_key: str) -> None:
    opened = len(events(tls_server, "stream opened"))
    with EnhancerClient(tls_server.target, tls_key, connect_timeout=2) as c, \
            pytest.raises(HushwireClientError) as err:
        c.enhance(_noise(0.1), RATE)
    assert err.value.status is not None and err.value.status.name == "UNAVAILABLE", err.value
    assert len(events(tls_server, "stream opened")) == opened   # nothing reached a servicer


def test_a_client_that_trusts_another_ca_is_refused(tls_server: ServerProcess, tls_key: str,
                                                    pki: PKI) -> None:  # noqa: F811
    opened = len(events(tls_server, "stream opened"))
    with EnhancerClient(tls_server.target, tls_key, connect_timeout=2, tls_ca=str(pki.wrong_ca.path)) as c, \
            pytest.raises(HushwireClientError) as err:
        c.enhance(_noise(0.1), RATE)
    assert err.value.status is not None and err.value.status.name == "UNAVAILABLE", err.value
    assert len(events(tls_server, "stream opened")) == opened
    with pytest.raises(ssl.SSLCertVerificationError):
        served_certificate(tls_server.port, pki.wrong_ca.path)


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_server: ServerProcess, mtls_key: str,
                                                           pki: PKI) -> None:  # noqa: F811
    with EnhancerClient(mtls_server.target, mtls_key, connect_timeout=2, tls_ca=str(pki.ca.path)) as c, \
            pytest.raises(HushwireClientError) as err:
        c.enhance(_noise(0.1), RATE)
    assert err.value.status is not None and err.value.status.name == "UNAVAILABLE", err.value
    # A certificate from another CA is refused as well.
    stranger = pki.wrong_ca.issue("stranger", "stranger", client=True)
    with EnhancerClient(mtls_server.target, mtls_key, connect_timeout=2, tls_ca=str(pki.ca.path),
                        tls_cert=str(stranger.cert), tls_key=str(stranger.key)) as c, \
            pytest.raises(HushwireClientError):
        c.enhance(_noise(0.1), RATE)
    assert not events(mtls_server, "stream opened")


def test_mutual_tls_commands_and_the_subject_in_the_log(mtls_server: ServerProcess, mtls_key: str, pki: PKI,  # noqa: F811
                                                        tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    white_noise_file(src, seconds=1.0)
    tls = ["--tls-ca", str(pki.ca.path), "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)]
    common = ["--target", mtls_server.target, "--key", mtls_key]
    run_cli("enhance", str(src), str(tmp_path / "out.wav"), *common, *tls)
    assert sf.info(str(tmp_path / "out.wav")).frames == 16000
    # The same files from the environment (HUSHWIRE_CLIENT_TLS_*), for jobs.
    env = {**os.environ, "HUSHWIRE_CLIENT_TLS_CA": str(pki.ca.path), "HUSHWIRE_CLIENT_TLS_CERT": str(pki.client.cert),
           "HUSHWIRE_CLIENT_TLS_KEY": str(pki.client.key)}
    out = run_cli("jobs", "submit", str(src), "--wait", "--quiet", "--out", str(tmp_path / "results"), *common,
                  env=env, timeout=120).stdout
    assert out.count(str(src)) == 2, out
    opened = events(mtls_server, "stream opened")
    submitted = events(mtls_server, "job submitted")
    assert len(opened) == 1 and len(submitted) == 1, mtls_server.log
    for e in (*opened, *submitted):
        assert e["client_subject"] == pki.client.subject, e
    # Without the client certificate the command fails with one line.
    bad = run_cli("enhance", str(src), str(tmp_path / "x.wav"), *common, "--tls-ca", str(pki.ca.path),
                  "--connect-timeout", "2", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr


def test_a_certificate_rotated_under_an_open_stream(tls_server: ServerProcess, tls_key: str, pki: PKI,  # noqa: F811
                                                    tmp_path: Path) -> None:
    cert, key = tls_server.data_dir / "live.crt", tls_server.data_dir / "live.key"
    assert served_certificate(tls_server.port, pki.ca.path) == pki.server.der
    reloads = len(events(tls_server, RELOADED))
    feed = Feed()
    with EnhancerClient(tls_server.target, tls_key, tls_ca=str(pki.ca.path)) as c:
        feed.put_chunks(10)
        live = c.stream(feed, RATE)
        delay = live.delay_samples
        reader = Reader(live)
        reader.wait_frames(5 * CHUNK)
        # The operator's rotation: new files in place, no signal.
        rotated = pki.ca.issue("rotated", "hushwire server (rotated)")
        rotated.install(cert, key)
        assert served_certificate(tls_server.port, pki.ca.path) == rotated.der   # new connections: new certificate
        wait_until("the reload in the log", lambda: len(events(tls_server, RELOADED)) == reloads + 1)
        with EnhancerClient(tls_server.target, tls_key, tls_ca=str(pki.ca.path)) as fresh:
            assert fresh.enhance(_noise(0.1), RATE).shape == (1600,)
        # The open stream never noticed.
        feed.put_chunks(10, seed=1)
        feed.end()
        reader.thread.join(30)
    assert not reader.thread.is_alive() and reader.error is None, reader.error
    assert not any(o.backend_lost for o in reader.outputs)
    assert reader.frames() == feed.fed + delay

    # A botched rotation (a key that is not the certificate's) keeps the working pair in service.
    other = pki.ca.issue("other", "other")
    Leaf(rotated.cert, other.key, rotated.der, rotated.subject).install(cert, key)
    assert served_certificate(tls_server.port, pki.ca.path) == rotated.der
    wait_until("the warning", lambda: "keeping the current certificate" in tls_server.log)

    # SIGHUP re-reads files that did not change (e.g. a CA bundle updated by a script that keeps
    # mtimes): a good pair is back, and the reload is logged once more.
    rotated.install(cert, key)
    before = len(events(tls_server, RELOADED))
    served_certificate(tls_server.port, pki.ca.path)          # picks up the restored pair
    wait_until("the reload", lambda: len(events(tls_server, RELOADED)) == before + 1)
    tls_server.proc.send_signal(signal.SIGHUP)
    wait_until("the SIGHUP line", lambda: "SIGHUP" in tls_server.log)
    assert served_certificate(tls_server.port, pki.ca.path) == rotated.der
    wait_until("the forced reload", lambda: len(events(tls_server, RELOADED)) == before + 2)
    assert tls_server.proc.poll() is None


def test_bad_tls_files_stop_the_server_with_one_line(tmp_path: Path, pki: PKI) -> None:  # noqa: F811
    other = pki.ca.issue("mismatch", "mismatch")
    out = run_cli("serve", "--port", "0", "--data-dir", str(tmp_path), "--tls-cert", str(pki.server.cert),
                  "--tls-key", str(other.key), check=False, timeout=60)
    assert out.returncode == 2 and "cannot use the TLS files" in out.stderr and "Traceback" not in out.stderr, \
        out.stderr
    out = run_cli("serve", "--port", "0", "--data-dir", str(tmp_path), "--tls-cert", str(pki.server.cert),
                  check=False, timeout=60)
    assert out.returncode == 2 and "--tls-key" in out.stderr, out.stderr


# -- the gateway: HTTPS in front, mutual TLS behind ----------------------------------------------------------


@pytest.fixture(scope="module")
def https_gateway(mtls_server: ServerProcess, pki: PKI) -> Iterator[GatewayProcess]:  # noqa: F811
    gw = start_gateway(mtls_server.data_dir, mtls_server.target, "--tls-cert", str(pki.server.cert),
                       "--tls-key", str(pki.server.key), "--grpc-tls-ca", str(pki.ca.path),
                       "--grpc-tls-cert", str(pki.client.cert), "--grpc-tls-key", str(pki.client.key))
    yield gw
    assert gw.stop() == 0, gw.log
    assert "Traceback" not in gw.log, gw.log


def test_the_gateway_serves_https_and_calls_the_server_over_mutual_tls(
        https_gateway: GatewayProcess, mtls_server: ServerProcess, mtls_key: str, pki: PKI,  # noqa: F811
        tmp_path: Path) -> None:
    streams_before = len(events(mtls_server, "stream opened"))
    assert https_gateway.url.startswith("https://127.0.0.1:"), https_gateway.url
    src = tmp_path / "in.wav"
    white_noise_file(src, seconds=1.0)
    auth = {"Authorization": mtls_key}
    with httpx.Client(base_url=https_gateway.url, verify=ssl.create_default_context(cafile=str(pki.ca.path)),
                      timeout=30, trust_env=False) as http:
        assert http.get("/readyz").status_code == 200
        r = http.post("/enhance", headers=auth, files={"clip": ("in.wav", src.read_bytes(), "audio/wav")})
        assert r.status_code == 200, r.text
        job_id = r.json()["clip"]
        deadline = time.monotonic() + 60
        while (s := http.get(f"/stat/jobs/{job_id}", headers=auth).json())["job_status"] != "completed":
            assert time.monotonic() < deadline and s["job_status"] != "failed", s
            time.sleep(0.1)
        assert s["result"].startswith(https_gateway.url + "/results/"), s    # the default public URL is https://
        got = http.get(s["result"])
        assert got.status_code == 200 and sf.info(__import__("io").BytesIO(got.content)).frames == 16000
    # Plain HTTP to the HTTPS port gets no answer a client could mistake for the API.
    with httpx.Client(timeout=5, trust_env=False) as plain, pytest.raises(httpx.HTTPError):
        plain.get(https_gateway.url.replace("https://", "http://") + "/readyz").raise_for_status()
    # /live over wss://, same origin as the page.
    ctx = ssl.create_default_context(cafile=str(pki.ca.path))
    url = https_gateway.url.replace("https://", "wss://") + "/live"
    with ws_connect(url, ssl=ctx, open_timeout=10, additional_headers={"Origin": https_gateway.url}) as ws:
        ws.send(json.dumps({"key": mtls_key, "sample_rate_hz": RATE, "encoding": "float32"}))
        hello = json.loads(ws.recv(timeout=10))
        assert hello["algorithmic_delay_samples"] > 0, hello
        ws.send(_noise(0.1).tobytes())
        reply = ws.recv(timeout=10)
        assert isinstance(reply, bytes) and len(reply) >= 4
        ws.send(json.dumps({"end": True}))
    # The gateway's stream and job reached the server with the gateway's client certificate.
    assert [e["client_subject"] for e in events(mtls_server, "stream opened")[streams_before:]] == \
        [pki.client.subject]
    assert any(e.get("job_id") == job_id and e["client_subject"] == pki.client.subject
               for e in events(mtls_server, "job submitted"))


# -- the plain-HTTP side doors ----------------------------------------------------------------------------


def test_metrics_and_the_health_mirror_listen_where_told_and_on_loopback_by_default(tmp_path: Path) -> None:
    from hushwire.settings import resolve

    assert resolve(["metrics_host", "health_http_host"], {}, env={}) == {"metrics_host": "127.0.0.1",
                                                                         "health_http_host": "127.0.0.1"}
    cfg = tmp_path / "hw.toml"
    cfg.write_text('[server]\nmetrics_host = "10.1.2.3"\nhealth_http_host = "::"\n')
    assert resolve(["metrics_host", "health_http_host"], {}, env={"HUSHWIRE_METRICS_HOST": "0.0.0.0"},
                   config_file=cfg) == {"metrics_host": "0.0.0.0", "health_http_host": "::"}
    # A second loopback address stands in for "another interface": each side door answers on its own
    # address only, whatever the gRPC port's.
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        metrics_port = s.getsockname()[1]
    srv = start_server(tmp_path, "--workers", "0", "--metrics-port", str(metrics_port), "--metrics-host",
                       "127.0.0.2", "--health-http-port", "0", "--health-http-host", "127.0.0.2")
    try:
        mirror = int(srv.log.split("health mirror on http://127.0.0.2:")[1].split("/")[0])
        with httpx.Client(timeout=5, trust_env=False) as http:
            assert http.get(f"http://127.0.0.2:{mirror}/readyz").status_code == 200
            assert http.get(f"http://127.0.0.2:{metrics_port}/metrics").status_code == 200
            for port in (mirror, metrics_port):
                with pytest.raises(httpx.ConnectError):
                    http.get(f"http://127.0.0.1:{port}/")
    finally:
        assert srv.stop() == 0, srv.log


@pytest.mark.slow
def test_the_mic_command_over_mutual_tls(mtls_server: ServerProcess, mtls_key: str, pki: PKI,  # noqa: F811
                                         tmp_path: Path,
                                         audio_home: tuple[dict[str, str], Path, Any]) -> None:  # noqa: F811
    env, _, _ = audio_home
    rec = tmp_path / "mic.wav"
    opened = len(events(mtls_server, "stream opened"))
    proc = run_cli("mic", "--target", mtls_server.target, "--key", mtls_key, "--input-device", "filein",
                   "--output-device", "fileout", "--rate", "48000", "--record", str(rec), "--duration", "1",
                   "--tls-ca", str(pki.ca.path), "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key),
                   env=env, timeout=60)
    assert "streamed 1.0 s at 48000 Hz" in proc.stderr.replace("\r", "\n"), proc.stderr
    assert sf.info(str(rec)).frames >= 48000
    new = events(mtls_server, "stream opened")[opened:]
    assert [e["client_subject"] for e in new] == [pki.client.subject]
