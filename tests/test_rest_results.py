"""What the REST path hands back (issue #18, item 8): the downloaded result is the denoiser's output,
attenuation limit 0 returns the input, the result URL expires within its TTL, limits are per user
across that user's keys, and a gateway stopped mid-upload finishes the request or leaves nothing."""

from __future__ import annotations

import io
import re
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import ServerProcess, create_key, run_cli, start_server
from test_gateway import GatewayProcess, auth, start_gateway, submit, wait_completed

from server.dsp import Denoiser
from server.signing import RESULT_URL_TTL_SECONDS

RATE = 16000
LSB = 1 / 32768   # one step of the 16-bit files below


@pytest.fixture(scope="module")
def gateway(server: ServerProcess) -> Iterator[GatewayProcess]:
    gw = start_gateway(server.data_dir, server.target)
    yield gw
    assert gw.stop() == 0, gw.log


@pytest.fixture(scope="module")
def key(api_key: str) -> str:
    """conftest's key for conftest's ``server`` (the gateway above fronts that server)."""
    return api_key


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """Speech-like tones in noise, 16-bit: what the gateway stores is exactly these samples."""
    t = np.arange(3 * RATE) / RATE
    rng = np.random.default_rng(11)
    x = 0.2 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0) + 0.03 * rng.standard_normal(t.size)
    path = tmp_path_factory.mktemp("audio") / "noisy.wav"
    sf.write(str(path), x.astype(np.float32), RATE, subtype="PCM_16")
    return path, sf.read(str(path), dtype="float32", always_2d=True)[0]


def _result(http: httpx.Client, key: str, path: Path, **fields: str) -> tuple[np.ndarray, str]:
    job_id = submit(http, key, ("file", path), **fields)["file"]
    url = wait_completed(http, key, job_id)["result"]
    resp = httpx.get(url, timeout=30)   # the signed URL alone, no key
    assert resp.status_code == 200, resp.text
    y, rate = sf.read(io.BytesIO(resp.content), dtype="float32", always_2d=True)
    assert rate == RATE
    return y, url


def _reference(x: np.ndarray, attenuation_limit_db: float | None = None) -> np.ndarray:
    """server.dsp on the whole input at once, aligned like a job (delay dropped, input's length)."""
    d = Denoiser(RATE, x.shape[1], attenuation_limit_db)
    y = np.concatenate([d.process(x), d.flush()])[d.latency_samples:][: x.shape[0]]
    return np.clip(y, -1.0, 1.0)


def test_the_downloaded_result_is_the_denoisers_output(gateway: GatewayProcess, key: str,
                                                         noisy: tuple[Path, np.ndarray]) -> None:
    path, x = noisy
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        y, url = _result(http, key, path)
    ref = _reference(x)
    assert y.shape == x.shape
    assert np.max(np.abs(y - ref)) <= LSB + 1e-7, np.max(np.abs(y - ref)) / LSB
    # and it is not the input: the denoiser did something (the noise is down by several dB)
    assert np.mean(np.square(y - x)) > 1e-5
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])
    now = time.time()
    assert now < expires <= now + RESULT_URL_TTL_SECONDS + 5, (expires - now, RESULT_URL_TTL_SECONDS)


def test_attenuation_limit_0_returns_the_input(gateway: GatewayProcess, key: str,
                                               noisy: tuple[Path, np.ndarray]) -> None:
    path, x = noisy
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        y, _ = _result(http, key, path, attenuation_limit_db="0")
    assert y.shape == x.shape
    assert np.max(np.abs(y - x)) <= LSB + 1e-7, np.max(np.abs(y - x)) / LSB


def test_limits_are_per_user_across_the_users_keys(tmp_path: Path, noisy: tuple[Path, np.ndarray]) -> None:
    """One unfinished job per user (no workers, so it stays unfinished): a second key of the same user
    is refused, another user's key is not."""
    made = run_cli("keys", "create", "--data-dir", str(tmp_path))
    first = made.stdout.strip().splitlines()[-1]
    uid = re.search(r"uid=(\d+)", made.stderr).group(1)   # type: ignore[union-attr]
    second = create_key(tmp_path, "--user", uid)
    stranger = create_key(tmp_path)
    srv = start_server(tmp_path, "--max-queued-jobs-per-user", "1", "--workers", "0")
    gw = start_gateway(tmp_path, srv.target)
    try:
        with httpx.Client(base_url=gw.url, timeout=60) as http:
            path = noisy[0]
            submit(http, first, ("file", path))
            files = {"file": (path.name, path.read_bytes())}
            resp = http.post("/enhance", headers=auth(second), files=files)
            assert resp.status_code == 429 and resp.json()["error"]["code"] == "RATE_LIMITED", resp.text
            assert http.post("/enhance", headers=auth(stranger), files=files).status_code == 200
    finally:
        assert gw.stop() == 0, gw.log
        assert srv.stop() == 0, srv.log


def _rows(data_dir: Path) -> int:
    con = sqlite3.connect(data_dir / "hushwire.db")
    try:
        return int(con.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
    finally:
        con.close()


def _upload_head(gw: GatewayProcess, key: str, body: bytes, boundary: str) -> socket.socket:
    host, _, port = gw.url.removeprefix("http://").rpartition(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall((f"POST /enhance HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {key}\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode())
    return s


def _body(path: Path, boundary: str) -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"a\"; filename=\"a.wav\"\r\n\r\n".encode()
            + path.read_bytes() + f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"b\"; "
            f"filename=\"b.wav\"\r\n\r\n".encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode())


@pytest.mark.slow
@pytest.mark.parametrize("client_finishes", [True, False], ids=["body-completed", "body-stalled"])
def test_sigterm_to_the_gateway_mid_upload_finishes_or_cleans_up(
        server: ServerProcess, key: str, noisy: tuple[Path, np.ndarray], client_finishes: bool) -> None:
    """SIGTERM while a two-file upload is half sent: a client that sends the rest within the gateway's
    grace time gets its reply and its jobs; one that stalls gets none, and its first file's held job
    is cancelled, not left behind. Either way the gateway exits 0."""
    gw = start_gateway(server.data_dir, server.target)
    boundary = "sigtermBoundary42"
    body = _body(noisy[0], boundary)
    half = len(body) // 2 + len(body) // 4   # past the first file: its held job exists on the server
    before = _rows(server.data_dir)
    s = _upload_head(gw, key, body, boundary)
    try:
        s.sendall(body[:half])
        deadline = time.monotonic() + 10
        while _rows(server.data_dir) == before:   # the first file's held job is stored
            assert time.monotonic() < deadline, "the first file never reached the server"
            time.sleep(0.05)
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        if client_finishes:
            s.sendall(body[half:])
            reply = s.makefile("rb").read().decode(errors="replace")
            assert reply.startswith("HTTP/1.1 200"), reply
            assert _rows(server.data_dir) == before + 2
        assert gw.proc.wait(timeout=30) == 0, gw.log
        if not client_finishes:
            deadline = time.monotonic() + 10
            while _rows(server.data_dir) != before:   # the held job of the cut request is cancelled
                assert time.monotonic() < deadline, f"{_rows(server.data_dir) - before} job(s) left behind"
                time.sleep(0.1)
    finally:
        s.close()
        if gw.proc.poll() is None:
            gw.stop()
