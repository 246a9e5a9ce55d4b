"""Edges that answered with the wrong error (issue #18, item 6), against a real server and gateway:
over-long keys and header sections, deeply nested JSON on /live, client input echoed into error
messages, and a client that cancels while the server writes to it."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import ServerProcess, free_port
from test_gateway import GatewayProcess, start_gateway
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from client import JobsClient
from hushwire.v1 import jobs_pb2, jobs_pb2_grpc
from server.errors import MAX_KEY_CHARS, MAX_QUOTED_CHARS


@pytest.fixture(scope="module")
def gateway(server: ServerProcess) -> Iterator[GatewayProcess]:
    gw = start_gateway(server.data_dir, server.target)
    yield gw
    assert gw.stop() == 0, gw.log
    assert "Traceback" not in gw.log, gw.log


@pytest.fixture(scope="module")
def key(api_key: str) -> str:
    """conftest's key for conftest's ``server`` (the gateway above fronts that server)."""
    return api_key


def _error(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return str(body["error"]["msg"])


# -- keys and header sections -------------------------------------------------------------------------


@pytest.mark.parametrize("length", [MAX_KEY_CHARS + 1, 8_000, 15_000])
def test_an_overlong_key_is_refused_in_the_json_shape(gateway: GatewayProcess, length: int) -> None:
    """It used to reach gRPC metadata (8 KiB limit): a random 502 UPSTREAM_ERROR."""
    headers = {"Authorization": "k" * length}
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        _error(http.get("/me", headers=headers), 401, "API_KEY_NOT_FOUND")
        _error(http.get("/stat/jobs/ACtYB187SXiv9___FlpPig", headers=headers), 401, "API_KEY_NOT_FOUND")
        _error(http.post("/enhance", headers=headers, files={"f": ("a.wav", b"RIFF")}), 401, "API_KEY_NOT_FOUND")


def test_an_overlong_key_is_refused_without_asking_the_server(tmp_path: Path) -> None:
    """A gateway whose server is unreachable answers an over-long key 401 itself (a key it forwards gets
    503: the server is asked)."""
    gw = start_gateway(tmp_path, f"127.0.0.1:{free_port()}", "--connect-timeout", "2")
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            _error(http.get("/me", headers={"Authorization": "k" * 2000}), 401, "API_KEY_NOT_FOUND")
            _error(http.get("/me", headers={"Authorization": "k" * 32}), 503, "SERVICE_UNAVAILABLE")
    finally:
        assert gw.stop() == 0, gw.log


def _raw_status(url: str, header: str) -> int:
    """Send a GET with ``header`` over a plain socket (no client library limits) and read the status."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as s:
        s.sendall(f"GET /me HTTP/1.1\r\nHost: {parts.netloc}\r\n{header}\r\n\r\n".encode())
        status_line = s.makefile("rb").readline().decode()
    return int(status_line.split()[1])


@pytest.mark.parametrize("header", ["Authorization: " + "k" * 100_000, "X-Pad: " + "p" * 1_000_000,
                                    "\r\n".join(f"X-Pad-{i}: {'p' * 100}" for i in range(2000))])
def test_a_header_section_over_the_limit_is_a_client_error(gateway: GatewayProcess, header: str) -> None:
    """Over the HTTP server's own limit (h11's 16 KiB of header section) the answer is uvicorn's 400,
    never a 5xx."""
    assert 400 <= _raw_status(gateway.url, header) < 500


# -- /live ------------------------------------------------------------------------------------------------


def _live_error(gateway: GatewayProcess, first: str) -> tuple[dict[str, str], int | None]:
    with connect(gateway.url.replace("http://", "ws://", 1) + "/live", open_timeout=10,
                 max_size=4 * 2**20) as ws:
        ws.send(first)
        reply = json.loads(ws.recv(timeout=20))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        return reply["error"], ws.close_code


@pytest.mark.parametrize("nested", ["[" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000])
def test_deeply_nested_json_on_live_is_an_invalid_request(gateway: GatewayProcess, nested: str) -> None:
    """json's parser recurses per level: it raised RecursionError, which became INTERNAL."""
    error, close = _live_error(gateway, nested)
    assert error["code"] == "INVALID_REQUEST" and "nested too deeply" in error["msg"], error
    assert close == 1008


def test_live_quotes_unknown_fields_short_and_refuses_a_long_key(gateway: GatewayProcess) -> None:
    error, _ = _live_error(gateway, json.dumps({"x" * 12_000: 1, "key": "k", "sample_rate_hz": 16000}))
    assert error["code"] == "INVALID_REQUEST" and len(error["msg"]) < 200, error
    error, _ = _live_error(gateway, json.dumps({"key": "k" * 2000, "sample_rate_hz": 16000}))
    assert error["code"] == "API_KEY_NOT_FOUND", error


# -- client input in error messages --------------------------------------------------------------------


def test_a_long_job_id_is_quoted_short(server: ServerProcess, gateway: GatewayProcess, key: str) -> None:
    """A 12,000-character job id was echoed whole; over gRPC it overflowed the metadata limit."""
    job_id = "J" * 12_000
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        msg = _error(http.get(f"/stat/jobs/{job_id}", headers={"Authorization": key}), 404, "JOB_NOT_FOUND")
        assert len(msg) < 2 * MAX_QUOTED_CHARS + 60 and "12000 characters" in msg, msg
        msg = _error(http.get(f"/results/{job_id}", params={"expires": "1", "sig": "ab"}), 404, "JOB_NOT_FOUND")
        assert len(msg) < 200, msg
        msg = _error(http.get("/results/x", params={"expires": "1", "sig": "a" * 12_000}), 404, "JOB_NOT_FOUND")
        assert len(msg) < 200, msg
        msg = _error(http.post("/enhance", headers={"Authorization": key},
                               files={"f" * 10_000: ("a.wav", b"RIFF")}, data={"z" * 10_000: "1"}),
                     400, "INVALID_REQUEST")
        assert len(msg) < 300, msg
    with grpc.insecure_channel(server.target) as ch:
        stub = jobs_pb2_grpc.JobsStub(ch)
        calls = ((stub.GetJob, jobs_pb2.GetJobRequest(job_id=job_id)),
                 (stub.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id)))
        for method, request in calls:
            with pytest.raises(grpc.RpcError) as info:
                method(request, metadata=(("authorization", key),), timeout=10)
            err = info.value
            assert err.code() == grpc.StatusCode.NOT_FOUND, err
            assert dict(err.trailing_metadata() or ())["hushwire-error-code"] == "JOB_NOT_FOUND"
            assert len(err.details() or "") < 2 * MAX_QUOTED_CHARS + 60, err.details()


# -- a client that cancels mid-write -------------------------------------------------------------------


def test_a_client_cancelling_a_download_mid_write_logs_one_info_line(server: ServerProcess, key: str,
                                                                      tmp_path: Path) -> None:
    """A write under way when the client cancels failed inside grpc, which logged an ERROR traceback
    for each (162 in one red-team session)."""
    src = tmp_path / "long.wav"
    # 12 MB of result (64-bit samples): far more than the client's flow-control window takes unread.
    sf.write(str(src), (np.random.default_rng(3).standard_normal((48000 * 16, 2)) * 0.05).astype(np.float32),
             48000, subtype="DOUBLE")
    with JobsClient(server.target, key) as jobs:
        job = jobs.wait(jobs.submit(src).job_id, timeout=120)
    before = server.log
    cancels = 5
    with grpc.insecure_channel(server.target) as ch:
        stub = jobs_pb2_grpc.JobsStub(ch)
        for _ in range(cancels):
            call = stub.DownloadResult(jobs_pb2.DownloadResultRequest(job_id=job.job_id),
                                       metadata=(("authorization", key),))
            next(call)
            next(call)
            time.sleep(0.3)   # the server's next write waits for this client, which then cancels
            call.cancel()
    time.sleep(2)
    new = server.log[len(before):]
    # A cancel that lands while the server waits for a write is this one INFO line; one that lands
    # between two writes (reading the blob) is grpc's own quiet cancellation, and no line at all.
    assert 1 <= new.count("client went away during a write") <= cancels, new
    assert "ERROR" not in new and "Traceback" not in new, new
