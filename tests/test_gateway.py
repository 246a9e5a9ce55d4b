"""End-to-end tests of the HTTP gateway (docs/design.md, "Files over REST").

Real parts only: a real ``hushwire serve`` subprocess, a real ``hushwire gateway`` subprocess in front
of it (``--port 0``, its ``listening on http://HOST:PORT`` line parsed), real keys made with
``hushwire keys create`` and real audio files written with soundfile. HTTP goes through httpx, and
through requests for the DeepHearing seed's own client call.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import grpc
import h11
import httpx
import numpy as np
import pytest
import requests
import soundfile as sf
from conftest import HUSHWIRE, ROOT, ServerProcess, create_key, free_port, start_logged, start_server, stop_process

from hushwire.contract.errors import RETRY_AFTER_SECONDS
from hushwire.v1 import jobs_pb2, jobs_pb2_grpc

JOB_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")
STAT_KEYS = {"model", "app_id", "billed_time", "timestamp", "mod_time", "file_name", "job_id", "uid", "file_key",
             "job_status", "progress"}
POLL_SECONDS = 60.0


# -- processes ---------------------------------------------------------------------------------------


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        return stop_process(self.proc, "gateway", sig, timeout)


def start_gateway(log_dir: Path, grpc_target: str, *extra: str, timeout: float = 30) -> GatewayProcess:
    """Start ``hushwire gateway --port 0`` against ``grpc_target``."""
    log_path = log_dir / f"gateway-{time.monotonic_ns()}.log"
    args = ["gateway", "--host", "127.0.0.1", "--port", "0", "--grpc-target", grpc_target, *extra]
    proc, m = start_logged(args, log_path, "gateway", timeout)
    return GatewayProcess(proc, f"{m.group(1)}:{m.group(2)}", log_path)


_free_port = free_port


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "signing_secret"
    path.write_text(secrets.token_urlsafe(32))
    return path


@pytest.fixture(scope="module")
def hw_server(tmp_path_factory: pytest.TempPathFactory, secret_file: Path) -> Iterator[ServerProcess]:
    """The gRPC server, with a signing secret the tests know (to make a genuinely expired result URL)."""
    srv = start_server(tmp_path_factory.mktemp("data"), "--signing-secret-file", str(secret_file))
    yield srv
    assert srv.stop() == 0, srv.log


@pytest.fixture(scope="module")
def gateway(hw_server: ServerProcess) -> Iterator[GatewayProcess]:
    gw = start_gateway(hw_server.data_dir, hw_server.target)
    yield gw
    assert gw.stop() == 0, gw.log
    assert "Traceback" not in gw.log, gw.log


@pytest.fixture(scope="module")
def key(hw_server: ServerProcess) -> str:
    return create_key(hw_server.data_dir, "--name", "alice")


@pytest.fixture(scope="module")
def other_key(hw_server: ServerProcess) -> str:
    return create_key(hw_server.data_dir, "--name", "bob")


@pytest.fixture(scope="module")
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as client:
        yield client


@pytest.fixture(scope="module")
def jobs_stub(hw_server: ServerProcess) -> Iterator[jobs_pb2_grpc.JobsStub]:
    with grpc.insecure_channel(hw_server.target) as channel:
        yield jobs_pb2_grpc.JobsStub(channel)


def list_job_ids(stub: jobs_pb2_grpc.JobsStub, key: str) -> set[str]:
    ids: set[str] = set()
    token = ""
    while True:
        resp = stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=500, page_token=token),
                             metadata=[("authorization", key)], timeout=10)
        ids.update(j.job_id for j in resp.jobs)
        token = resp.next_page_token
        if not token:
            return ids


# -- audio -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Audio:
    path: Path
    rate: int
    channels: int
    frames: int
    format: str
    subtype: str


def write_audio(path: Path, seconds: float, rate: int, channels: int, subtype: str, seed: int = 0) -> Audio:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    speech_like = 0.2 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    x = speech_like[:, None] + 0.03 * rng.standard_normal((t.size, channels))
    sf.write(str(path), x.astype(np.float32), rate, subtype=subtype)
    info = sf.info(str(path))
    return Audio(path, info.samplerate, info.channels, info.frames, info.format, info.subtype)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="module")
def wav16(audio_dir: Path) -> Audio:
    return write_audio(audio_dir / "speech.wav", 1.0, 16000, 1, "PCM_16", seed=1)


@pytest.fixture(scope="module")
def flac48(audio_dir: Path) -> Audio:
    return write_audio(audio_dir / "stereo.flac", 0.5, 48000, 2, "PCM_24", seed=2)


@pytest.fixture(scope="module")
def text_wav(audio_dir: Path) -> Path:
    path = audio_dir / "notes.wav"
    path.write_text("this is not audio at all\n" * 20)
    return path


def auth(key: str) -> dict[str, str]:
    return {"Authorization": key}


def assert_error(resp: httpx.Response | requests.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["msg"], str) and body["error"]["msg"], body
    return body


def submit(http: httpx.Client, key: str, *files: tuple[str, Path], **fields: str) -> dict[str, Any]:
    opened = [(name, (path.name, path.open("rb"))) for name, path in files]
    try:
        resp = http.post("/enhance", headers=auth(key), files=opened, data=fields)
    finally:
        for _, (_, f) in opened:
            f.close()
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def wait_completed(http: httpx.Client, key: str, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + POLL_SECONDS
    method = "GET"
    while True:
        resp = http.request(method, f"/stat/jobs/{job_id}", headers=auth(key))
        assert resp.status_code == 200, resp.text
        stat: dict[str, Any] = resp.json()
        assert set(stat) - {"result", "error"} == STAT_KEYS, stat
        if stat["job_status"] == "completed":
            return stat
        assert stat["job_status"] in ("pending", "pre-processing", "processing", "post-processing"), stat
        assert "result" not in stat and "error" not in stat, stat
        assert time.monotonic() < deadline, f"job {job_id} not completed within {POLL_SECONDS} s: {stat}"
        method = "POST" if method == "GET" else "GET"   # both methods are the same endpoint
        time.sleep(0.2)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "hushwireTestBoundary7MA4YWxk") -> bytes:
    """A multipart/form-data body by hand: (field name, file name or None, content)."""
    out = io.BytesIO()
    for name, file_name, content in parts:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"'
        if file_name is not None:
            disposition += f'; filename="{file_name}"'
        out.write(f"Content-Disposition: {disposition}\r\n".encode())
        if file_name is not None:
            out.write(b"Content-Type: application/octet-stream\r\n")
        out.write(b"\r\n" + content + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


MULTIPART_TYPE = "multipart/form-data; boundary=hushwireTestBoundary7MA4YWxk"


# -- probes, pages, docs ---------------------------------------------------------------------------


def test_gateway_logs_its_address_and_is_alive(gateway: GatewayProcess, http: httpx.Client) -> None:
    assert re.search(r"listening on http://127\.0\.0\.1:\d+", gateway.log)
    resp = http.get("/healthz")
    assert resp.status_code == 200


def test_readyz_when_the_server_serves(http: httpx.Client) -> None:
    resp = http.get("/readyz")
    assert resp.status_code == 200, resp.text


def test_root_page_links_to_docs(http: httpx.Client) -> None:
    resp = http.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert 'href="/docs"' in resp.text


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def test_docs_use_only_local_assets(http: httpx.Client) -> None:
    resp = http.get("/docs")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    parser = _Links()
    parser.feed(resp.text)
    assert any(u.endswith(".js") for u in parser.urls) and any(u.endswith(".css") for u in parser.urls), parser.urls
    for url in parser.urls:
        assert url.startswith("/") and not url.startswith("//"), f"non-local asset URL {url}"
        asset = http.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
    assert "http://" not in resp.text and "https://" not in resp.text
    assert "'/openapi.json'" in resp.text or '"/openapi.json"' in resp.text
    assert '"validatorUrl": null' in resp.text   # no badge fetched from the online validator


def test_openapi_documents_the_multipart_upload(http: httpx.Client) -> None:
    resp = http.get("/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"].startswith("3.0")
    body = doc["paths"]["/enhance"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    files = [p for p in schema["properties"].values() if p.get("format") == "binary"]
    assert files, schema
    assert schema["properties"]["attenuation_limit_db"]["type"] == "number"
    assert schema["additionalProperties"]["format"] == "binary"   # any field name carries a file
    assert {"get", "post"} <= set(doc["paths"]["/stat/jobs/{job_id}"])
    assert {"/results/{job_id}", "/me", "/healthz", "/readyz"} <= set(doc["paths"])
    assert set(doc["components"]["schemas"]["JobStat"]["properties"]) == STAT_KEYS | {"result", "error", "callback"}
    assert "422" not in json.dumps(doc["paths"])


def test_unknown_route_and_method_are_json_errors(http: httpx.Client) -> None:
    assert_error(http.get("/no/such/route"), 404, "NOT_FOUND")
    assert_error(http.delete("/enhance"), 405, "METHOD_NOT_ALLOWED")


# -- account -----------------------------------------------------------------------------------------


def test_me(http: httpx.Client, key: str) -> None:
    resp = http.get("/me", headers=auth(key))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"uid", "name"}
    assert body["name"] == "alice" and isinstance(body["uid"], int)
    assert http.get("/me", headers={"Authorization": f"Bearer {key}"}).json() == body


def test_me_needs_a_valid_key(http: httpx.Client) -> None:
    assert_error(http.get("/me"), 401, "API_KEY_NOT_FOUND")
    assert_error(http.get("/me", headers=auth("not-a-key")), 401, "API_KEY_NOT_FOUND")
    assert_error(http.get("/me", headers={"Authorization": "Bearer"}), 401, "API_KEY_NOT_FOUND")


# -- upload, status, download --------------------------------------------------------------------------


# The seed opens the file without closing it; that is the seed's business, not a gateway failure.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_seed_python_client_call_unchanged(gateway: GatewayProcess, key: str, wav16: Audio) -> None:
    url = gateway.url
    # The DeepHearing seed's own Python call, with the URL and key swapped in.
    response = requests.request(
        'POST',
        url + '/enhance',
        headers={
            'Authorization': key,
        },
        files={
            'file_key': open(wav16.path, 'rb')
        }
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["file_key"]
    assert JOB_ID.match(body["file_key"]), body


def test_several_files_and_a_repeated_field(http: httpx.Client, key: str, wav16: Audio, flac48: Audio) -> None:
    body = submit(http, key, ("take", wav16.path), ("take", flac48.path), ("other", wav16.path),
                  ("take", wav16.path))
    assert list(body) == ["take", "other"]
    assert isinstance(body["take"], list) and len(body["take"]) == 3
    assert isinstance(body["other"], str)
    ids = [*body["take"], body["other"]]
    assert all(JOB_ID.match(i) for i in ids) and len(set(ids)) == 4
    stats = [http.get(f"/stat/jobs/{i}", headers=auth(key)).json() for i in body["take"]]
    assert [s["file_name"] for s in stats] == ["speech.wav", "stereo.flac", "speech.wav"]   # part order
    assert {s["file_key"] for s in stats} == {"take"}


@pytest.mark.parametrize("which", ["wav16", "flac48"])
def test_poll_to_completed_and_download_without_a_key(
    which: str, request: pytest.FixtureRequest, gateway: GatewayProcess, http: httpx.Client, key: str,
    tmp_path: Path,
) -> None:
    audio: Audio = request.getfixturevalue(which)
    job_id = submit(http, key, ("file_key", audio.path))["file_key"]
    stat = wait_completed(http, key, job_id)
    me = http.get("/me", headers=auth(key)).json()
    assert stat["job_id"] == job_id and stat["file_name"] == audio.path.name and stat["file_key"] == "file_key"
    assert stat["app_id"] == 1 and stat["uid"] == me["uid"]
    assert stat["model"] == ("model_16k" if audio.rate <= 16000 else "model_48k")
    assert stat["billed_time"] == pytest.approx(audio.frames / audio.rate * audio.channels, rel=1e-3)
    assert isinstance(stat["timestamp"], int) and isinstance(stat["mod_time"], int)
    assert stat["timestamp"] <= stat["mod_time"] <= time.time() + 1
    assert stat["progress"] == pytest.approx(1.0)
    assert "error" not in stat
    assert stat["result"].startswith(f"{gateway.url}/results/{job_id}?")

    with httpx.Client(timeout=30, trust_env=False) as browser:   # no Authorization header at all
        resp = browser.get(stat["result"])
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("audio/")
    assert "attachment" in resp.headers["content-disposition"]
    out = tmp_path / f"result.{audio.path.suffix}"
    out.write_bytes(resp.content)
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames, info.format, info.subtype) == (
        audio.rate, audio.channels, audio.frames, audio.format, audio.subtype)
    y, _ = sf.read(str(out), dtype="float32", always_2d=True)
    assert np.all(np.isfinite(y)) and np.max(np.abs(y)) > 0


def _exchange(sock: socket.socket, conn: h11.Connection, target: str) -> tuple[int, bytes] | str:
    """One GET on an open HTTP/1.1 connection: (status, body), or how the connection failed."""
    try:
        sock.sendall(conn.send(h11.Request(method="GET", target=target, headers=[("Host", "hushwire")])) or b"")
        sock.sendall(conn.send(h11.EndOfMessage()) or b"")
    except OSError as exc:
        return f"no reply: {type(exc).__name__} {exc}"
    status, body = 0, bytearray()
    while True:
        try:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
                continue
        except (OSError, h11.RemoteProtocolError) as exc:
            return f"no reply: {type(exc).__name__} {exc}"
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            conn.start_next_cycle()
            return status, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            return "no reply: the gateway closed the connection"


def test_a_connection_idle_past_a_clients_keepalive_expiry_still_gets_its_download(
        gateway: GatewayProcess, http: httpx.Client, key: str, wav16: Audio) -> None:
    """The soak's broken download (httpx ReadError, no reply): httpx keeps an idle connection for 5 s,
    and so did the gateway (uvicorn's default), so a request sent on a connection idle just under 5 s
    could meet the gateway's close. The gateway now keeps idle connections longer than the usual
    clients and balancers (--http-keepalive-seconds, 75 s), so they close first."""
    expiry_s = httpx.Limits().keepalive_expiry or 5.0   # httpx's default: the most common Python client
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        conn = h11.Connection(h11.CLIENT)
        first = _exchange(sock, conn, "/healthz")
        idle_from = time.monotonic()
        assert isinstance(first, tuple) and first[0] == 200, first
        url = httpx.URL(wait_completed(http, key, submit(http, key, ("f", wav16.path))["f"])["result"])
        time.sleep(max(0.0, idle_from + expiry_s + 0.5 - time.monotonic()))   # idle past the client's expiry
        download = _exchange(sock, conn, url.raw_path.decode())
    assert isinstance(download, tuple), download
    assert download[0] == 200 and sf.info(io.BytesIO(download[1])).frames == wav16.frames, download[0]


def test_download_with_the_owners_key_header_too(http: httpx.Client, key: str, wav16: Audio) -> None:
    job_id = submit(http, key, ("f", wav16.path))["f"]
    url = wait_completed(http, key, job_id)["result"]
    resp = http.get(url, headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text
    assert sf.info(io.BytesIO(resp.content)).frames == wav16.frames


def test_a_signed_url_works_whatever_key_comes_along(http: httpx.Client, key: str, other_key: str,
                                                     wav16: Audio) -> None:
    job_id = submit(http, key, ("f", wav16.path))["f"]
    url = wait_completed(http, key, job_id)["result"]
    assert http.get(url, headers=auth("not-a-key")).status_code == 200
    assert http.get(url, headers=auth(other_key)).status_code == 200


def test_attenuation_option_reaches_every_job(http: httpx.Client, key: str, wav16: Audio,
                                              jobs_stub: jobs_pb2_grpc.JobsStub) -> None:
    # The option may come after the files: it is applied when the held jobs are started.
    resp = http.post("/enhance", headers={**auth(key), "Content-Type": MULTIPART_TYPE}, content=multipart([
        ("a", "one.wav", wav16.path.read_bytes()),
        ("b", "two.wav", wav16.path.read_bytes()),
        ("attenuation_limit_db", None, b"6.5"),
    ]))
    assert resp.status_code == 200, resp.text
    for job_id in resp.json().values():
        job = jobs_stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=[("authorization", key)], timeout=10)
        assert job.options.HasField("attenuation_limit_db")
        assert job.options.attenuation_limit_db == pytest.approx(6.5)
        assert not job.held
    # ... or before them.
    resp = http.post("/enhance", headers=auth(key), data={"attenuation_limit_db": "0"},
                     files={"x": (wav16.path.name, wav16.path.read_bytes())})
    assert resp.status_code == 200, resp.text
    job = jobs_stub.GetJob(jobs_pb2.GetJobRequest(job_id=resp.json()["x"]), metadata=[("authorization", key)],
                           timeout=10)
    assert job.options.HasField("attenuation_limit_db") and job.options.attenuation_limit_db == 0


def test_a_file_that_fails_to_decode_is_a_failed_job_with_its_error(http: httpx.Client, key: str,
                                                                    audio_dir: Path) -> None:
    # A valid FLAC header over damaged frames: accepted at upload, refused by the full decode.
    good = write_audio(audio_dir / "damaged.flac", 3.0, 16000, 1, "PCM_16", seed=4)
    data = bytearray(good.path.read_bytes())
    rng = np.random.default_rng(5)
    data[len(data) // 4:] = rng.integers(0, 256, len(data) - len(data) // 4, dtype=np.uint8).tobytes()
    good.path.write_bytes(bytes(data))
    job_id = submit(http, key, ("f", good.path))["f"]
    deadline = time.monotonic() + POLL_SECONDS
    while (stat := http.get(f"/stat/jobs/{job_id}", headers=auth(key)).json())["job_status"] != "failed":
        assert stat["job_status"] != "completed", stat
        assert time.monotonic() < deadline, stat
        time.sleep(0.2)
    assert set(stat) == STAT_KEYS | {"error"}, stat   # no result URL for a failed job
    assert stat["error"]["code"] == "INVALID_FILE" and stat["error"]["msg"], stat


def test_a_chunked_body_without_content_length(http: httpx.Client, key: str, wav16: Audio) -> None:
    body = multipart([("streamed", "s.wav", wav16.path.read_bytes())])

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(body), 1000):   # small pieces, split anywhere, even inside the boundary
            yield body[i:i + 1000]

    resp = http.post("/enhance", headers={**auth(key), "Content-Type": MULTIPART_TYPE}, content=pieces())
    assert resp.status_code == 200, resp.text
    stat = wait_completed(http, key, resp.json()["streamed"])
    assert stat["file_name"] == "s.wav"


# -- refusals ------------------------------------------------------------------------------------------


def test_missing_or_unknown_key_is_401(http: httpx.Client, wav16: Audio) -> None:
    files = {"file_key": (wav16.path.name, wav16.path.read_bytes())}
    assert_error(http.post("/enhance", files=files), 401, "API_KEY_NOT_FOUND")
    body = assert_error(http.post("/enhance", files=files, headers=auth("hw_unknown")), 401, "API_KEY_NOT_FOUND")
    assert body["error"]["msg"] == "Unregistered API Key"   # the seed's message
    assert_error(http.get("/stat/jobs/ACtYB187SXiv9___FlpPig"), 401, "API_KEY_NOT_FOUND")
    assert_error(http.get("/stat/jobs/ACtYB187SXiv9___FlpPig", headers=auth("nope")), 401, "API_KEY_NOT_FOUND")


def test_a_text_file_named_wav_is_invalid_file(http: httpx.Client, key: str, text_wav: Path) -> None:
    resp = http.post("/enhance", headers=auth(key), files={"file_key": (text_wav.name, text_wav.read_bytes())})
    assert_error(resp, 400, "INVALID_FILE")


def test_no_file_is_invalid_file(http: httpx.Client, key: str) -> None:
    headers = {**auth(key), "Content-Type": MULTIPART_TYPE}
    assert_error(http.post("/enhance", headers=headers, content=multipart([])), 400, "INVALID_FILE")
    only_option = multipart([("attenuation_limit_db", None, b"3")])
    assert_error(http.post("/enhance", headers=headers, content=only_option), 400, "INVALID_FILE")
    # What a browser sends for a file input left empty: a file part with no name and no bytes.
    empty = multipart([("file_key", "", b"")])
    assert_error(http.post("/enhance", headers=headers, content=empty), 400, "INVALID_FILE")


def test_unknown_field_is_invalid_request(http: httpx.Client, key: str, wav16: Audio) -> None:
    resp = http.post("/enhance", headers=auth(key), data={"model": "big"},
                     files={"file_key": (wav16.path.name, wav16.path.read_bytes())})
    body = assert_error(resp, 400, "INVALID_REQUEST")
    assert "model" in body["error"]["msg"]


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", ""])
def test_bad_option_value_is_invalid_request(http: httpx.Client, key: str, wav16: Audio, value: str) -> None:
    resp = http.post("/enhance", headers=auth(key), data={"attenuation_limit_db": value},
                     files={"file_key": (wav16.path.name, wav16.path.read_bytes())})
    assert_error(resp, 400, "INVALID_REQUEST")


def test_not_multipart_is_415(http: httpx.Client, key: str) -> None:
    assert_error(http.post("/enhance", headers=auth(key), json={"file_key": "x"}), 415, "INVALID_REQUEST")
    assert_error(http.post("/enhance", headers=auth(key), data={"file_key": "x"}), 415, "INVALID_REQUEST")


def test_malformed_multipart_is_invalid_request(http: httpx.Client, key: str, wav16: Audio) -> None:
    truncated = multipart([("f", "a.wav", wav16.path.read_bytes())])[:-40]
    resp = http.post("/enhance", headers={**auth(key), "Content-Type": MULTIPART_TYPE}, content=truncated)
    assert_error(resp, 400, "INVALID_REQUEST")
    resp = http.post("/enhance", headers={**auth(key), "Content-Type": "multipart/form-data"}, content=b"x")
    assert_error(resp, 400, "INVALID_REQUEST")


def test_unknown_job_is_404(http: httpx.Client, key: str) -> None:
    assert_error(http.get("/stat/jobs/ACtYB187SXiv9___FlpPig", headers=auth(key)), 404, "JOB_NOT_FOUND")
    assert_error(http.post("/stat/jobs/x", headers=auth(key)), 404, "JOB_NOT_FOUND")


def test_another_users_job_is_404(http: httpx.Client, key: str, other_key: str, wav16: Audio) -> None:
    job_id = submit(http, key, ("f", wav16.path))["f"]
    assert http.get(f"/stat/jobs/{job_id}", headers=auth(key)).status_code == 200
    assert_error(http.get(f"/stat/jobs/{job_id}", headers=auth(other_key)), 404, "JOB_NOT_FOUND")


def test_tampered_or_incomplete_result_url_is_404(http: httpx.Client, key: str, wav16: Audio) -> None:
    first = submit(http, key, ("f", wav16.path))["f"]
    second = submit(http, key, ("f", wav16.path))["f"]
    url = httpx.URL(wait_completed(http, key, first)["result"])
    wait_completed(http, key, second)
    expires, sig = url.params["expires"], url.params["sig"]
    assert http.get(url).status_code == 200
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    cases = [
        f"/results/{first}?expires={expires}&sig={flipped}",            # tampered signature
        f"/results/{first}?expires={int(expires) + 1}&sig={sig}",       # tampered expiry
        f"/results/{second}?expires={expires}&sig={sig}",               # another job's signature
        f"/results/ACtYB187SXiv9___FlpPig?expires={expires}&sig={sig}",  # unknown job
        f"/results/{first}?expires={expires}",                           # no sig
        f"/results/{first}?sig={sig}",                                   # no expires
        f"/results/{first}",
    ]
    for case in cases:
        assert_error(http.get(case), 404, "JOB_NOT_FOUND")


def test_expired_result_url_is_410(http: httpx.Client, key: str, wav16: Audio, secret_file: Path) -> None:
    # A genuinely signed URL whose expiry is past: signed with the server's own signer and secret.
    signing = pytest.importorskip("server.signing")
    job_id = submit(http, key, ("f", wav16.path))["f"]
    wait_completed(http, key, job_id)
    signer = signing.Signer(secret_file.read_bytes().strip())
    expires, sig = signer.sign(job_id, now=time.time() - 2 * signer.ttl_seconds)
    assert expires < time.time()
    resp = http.get(f"/results/{job_id}", params={"expires": expires, "sig": sig})
    assert_error(resp, 410, "RESULT_URL_EXPIRED")


def test_too_many_files_is_invalid_request_and_atomic(http: httpx.Client, key: str, wav16: Audio,
                                                      jobs_stub: jobs_pb2_grpc.JobsStub) -> None:
    before = list_job_ids(jobs_stub, key)
    data = wav16.path.read_bytes()
    resp = http.post("/enhance", headers=auth(key), files=[(f"f{i}", (f"{i}.wav", data)) for i in range(33)])
    body = assert_error(resp, 400, "INVALID_REQUEST")
    assert "32" in body["error"]["msg"]
    assert list_job_ids(jobs_stub, key) == before


def test_one_bad_file_cancels_the_whole_request(http: httpx.Client, key: str, wav16: Audio, text_wav: Path,
                                                jobs_stub: jobs_pb2_grpc.JobsStub) -> None:
    before = list_job_ids(jobs_stub, key)
    files = [("good", (wav16.path.name, wav16.path.read_bytes())),
             ("good", (wav16.path.name, wav16.path.read_bytes())),
             ("bad", (text_wav.name, text_wav.read_bytes()))]
    assert_error(http.post("/enhance", headers=auth(key), files=files), 400, "INVALID_FILE")
    assert list_job_ids(jobs_stub, key) == before
    # A refusal that comes from the form rather than the server, after a file was accepted.
    resp = http.post("/enhance", headers=auth(key), files=files[:1], data={"attenuation_limit_db": "loud"})
    assert_error(resp, 400, "INVALID_REQUEST")
    headers = {**auth(key), "Content-Type": MULTIPART_TYPE}
    late_field = multipart([("good", "a.wav", wav16.path.read_bytes()), ("comment", None, b"hi")])
    assert_error(http.post("/enhance", headers=headers, content=late_field), 400, "INVALID_REQUEST")
    cut = multipart([("good", "a.wav", wav16.path.read_bytes()), ("good2", "b.wav", wav16.path.read_bytes())])
    assert_error(http.post("/enhance", headers=headers, content=cut[:-200]), 400, "INVALID_REQUEST")
    time.sleep(0.2)
    assert list_job_ids(jobs_stub, key) == before


def test_a_client_that_goes_away_mid_upload_leaves_no_job(gateway: GatewayProcess, key: str, wav16: Audio,
                                                          jobs_stub: jobs_pb2_grpc.JobsStub) -> None:
    before = list_job_ids(jobs_stub, key)
    data = wav16.path.read_bytes()
    body = multipart([("a", "a.wav", data), ("b", "b.wav", data)])
    url = httpx.URL(gateway.url)
    head = (f"POST /enhance HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: {key}\r\n"
            f"Content-Type: {MULTIPART_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((url.host, url.port or 80), timeout=10) as conn:
        conn.sendall(head + body[: len(body) - len(data) // 2])   # the first file whole, half the second
        deadline = time.monotonic() + 10
        while not (held := list_job_ids(jobs_stub, key) - before):
            assert time.monotonic() < deadline, "the first file was never submitted"
            time.sleep(0.05)
        job = jobs_stub.GetJob(jobs_pb2.GetJobRequest(job_id=held.pop()), metadata=[("authorization", key)],
                               timeout=10)
        assert job.held   # not started while the request is still open
    deadline = time.monotonic() + 10
    while list_job_ids(jobs_stub, key) != before:
        assert time.monotonic() < deadline, "the held job of an abandoned request was not cancelled"
        time.sleep(0.05)


# -- other gateway processes ---------------------------------------------------------------------------


def test_upload_limit_is_413(hw_server: ServerProcess, key: str, audio_dir: Path,
                             jobs_stub: jobs_pb2_grpc.JobsStub) -> None:
    big = write_audio(audio_dir / "long.wav", 10.0, 16000, 1, "PCM_16")   # 320 kB
    gw = start_gateway(hw_server.data_dir, hw_server.target, "--max-upload-bytes", "200000")
    try:
        before = list_job_ids(jobs_stub, key)
        with httpx.Client(base_url=gw.url, timeout=30, trust_env=False) as http:
            resp = http.post("/enhance", headers=auth(key), files={"f": (big.path.name, big.path.read_bytes())})
            assert_error(resp, 413, "FILE_TOO_LARGE")
            body = multipart([("f", "long.wav", big.path.read_bytes())])

            def pieces() -> Iterator[bytes]:   # no Content-Length: the limit is found while streaming
                for i in range(0, len(body), 16384):
                    yield body[i:i + 16384]

            resp = http.post("/enhance", headers={**auth(key), "Content-Type": MULTIPART_TYPE}, content=pieces())
            assert_error(resp, 413, "FILE_TOO_LARGE")
            small = write_audio(audio_dir / "short.wav", 1.0, 16000, 1, "PCM_16")
            resp = http.post("/enhance", headers=auth(key), files={"f": (small.path.name, small.path.read_bytes())})
            assert resp.status_code == 200, resp.text
        after = list_job_ids(jobs_stub, key)
        assert after - before == {resp.json()["f"]}
    finally:
        assert gw.stop() == 0, gw.log


def test_public_url_prefixes_result_urls(hw_server: ServerProcess, key: str, wav16: Audio) -> None:
    gw = start_gateway(hw_server.data_dir, hw_server.target, "--public-url", "https://audio.example.test/hw/")
    try:
        with httpx.Client(base_url=gw.url, timeout=30, trust_env=False) as http:
            job_id = submit(http, key, ("f", wav16.path))["f"]
            result = wait_completed(http, key, job_id)["result"]
        assert result.startswith(f"https://audio.example.test/hw/results/{job_id}?expires=")
    finally:
        assert gw.stop() == 0, gw.log


def test_wildcard_host_needs_a_public_url() -> None:
    proc = subprocess.run([*HUSHWIRE, "gateway", "--host", "0.0.0.0", "--port", "0"], capture_output=True,
                          text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--public-url" in lines[0], proc.stderr


def test_server_down_is_503_and_the_gateway_recovers(tmp_path: Path) -> None:
    port = _free_port()
    gw = start_gateway(tmp_path, f"127.0.0.1:{port}", "--connect-timeout", "3")
    srv: ServerProcess | None = None
    try:
        with httpx.Client(base_url=gw.url, timeout=30, trust_env=False) as http:
            assert http.get("/healthz").status_code == 200
            assert_error(http.get("/readyz"), 503, "SERVICE_UNAVAILABLE")
            assert_error(http.get("/me", headers=auth("k")), 503, "SERVICE_UNAVAILABLE")
            assert_error(http.get("/stat/jobs/ACtYB187SXiv9___FlpPig", headers=auth("k")), 503,
                         "SERVICE_UNAVAILABLE")
            upload = multipart([("f", "a.wav", b"RIFF....WAVEfmt ")])
            resp = http.post("/enhance", headers={**auth("k"), "Content-Type": MULTIPART_TYPE}, content=upload)
            assert_error(resp, 503, "SERVICE_UNAVAILABLE")
            assert resp.headers.get("retry-after") == str(RETRY_AFTER_SECONDS), resp.headers   # try again soon

            (tmp_path / "data").mkdir()
            srv = start_server(tmp_path / "data", "--port", str(port))
            key = create_key(srv.data_dir, "--name", "late")
            deadline = time.monotonic() + 20
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the gateway did not reconnect within 20 s"
                time.sleep(0.2)
            resp = http.get("/me", headers=auth(key))
            assert resp.status_code == 200, resp.text
            assert resp.json()["name"] == "late"
    finally:
        if srv is not None:
            assert srv.stop() == 0, srv.log
        assert gw.stop() == 0, gw.log
    assert "Traceback" not in gw.log, gw.log


def test_sigterm_exits_zero(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, f"127.0.0.1:{_free_port()}")
    assert gw.stop(signal.SIGTERM) == 0, gw.log


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.slow
def test_a_large_upload_streams_through_in_bounded_memory(gateway: GatewayProcess, http: httpx.Client, key: str,
                                                          audio_dir: Path,
                                                          jobs_stub: jobs_pb2_grpc.JobsStub) -> None:
    path = audio_dir / "long.flac.wav"
    rate, seconds = 16000, 45 * 60   # 86 MB of 16-bit mono
    with sf.SoundFile(str(path), "w", rate, 1, "PCM_16", format="WAV") as f:
        rng = np.random.default_rng(3)
        for _ in range(seconds // 60):
            f.write((0.05 * rng.standard_normal(rate * 60)).astype(np.float32))
    size = path.stat().st_size
    assert size > 80_000_000
    before = _peak_rss_kb(gateway.proc.pid)
    with path.open("rb") as f:
        resp = http.post("/enhance", headers=auth(key), files={"long": (path.name, f)}, timeout=120)
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["long"]
    jobs_stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), metadata=[("authorization", key)], timeout=10)
    grown_mb = (_peak_rss_kb(gateway.proc.pid) - before) / 1024
    assert grown_mb < 32, f"the gateway's peak memory grew by {grown_mb:.0f} MB for a {size / 1e6:.0f} MB upload"


# -- hostile requests -----------------------------------------------------------------------------


def test_a_thousand_tiny_files_are_refused_whole(http: httpx.Client, key: str, wav16: Audio,
                                                 jobs_stub: jobs_pb2_grpc.JobsStub) -> None:
    before = list_job_ids(jobs_stub, key)
    body = multipart([(f"f{i}", f"{i}.wav", wav16.path.read_bytes()[:64]) for i in range(1000)])
    resp = http.post("/enhance", headers={**auth(key), "Content-Type": MULTIPART_TYPE}, content=body)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] in ("INVALID_REQUEST", "INVALID_FILE")
    assert list_job_ids(jobs_stub, key) == before  # atomic: nothing was kept


def test_a_huge_field_name_is_refused_or_bounded(http: httpx.Client, key: str, wav16: Audio) -> None:
    name = "k" * 100_000
    resp = http.post("/enhance", headers={**auth(key), "Content-Type": MULTIPART_TYPE},
                     content=multipart([(name, "a.wav", wav16.path.read_bytes())]))
    if resp.status_code == 200:  # accepted: the stored file key is bounded
        job_id = next(iter(resp.json().values()))
        stat = http.get(f"/stat/jobs/{job_id}", headers=auth(key)).json()
        assert len(stat["file_key"]) <= 256
    else:
        assert_error(resp, 400, "INVALID_REQUEST")


def test_path_and_nul_in_the_file_name_are_neutralised(http: httpx.Client, key: str, wav16: Audio) -> None:
    resp = http.post("/enhance", headers={**auth(key), "Content-Type": MULTIPART_TYPE},
                     content=multipart([("f", "../../etc/pass\x00wd.wav", wav16.path.read_bytes())]))
    assert resp.status_code == 200, resp.text
    stat = wait_completed(http, key, resp.json()["f"])
    assert "/" not in stat["file_name"] and "\x00" not in stat["file_name"] and ".." not in stat["file_name"][:2]
    got = http.get(stat["result"])
    assert got.status_code == 200
    disposition = got.headers["content-disposition"]
    assert "/" not in disposition.split("filename", 1)[1] and "\x00" not in disposition


def test_a_stalled_upload_gets_408_and_leaves_no_job(tmp_path: Path, hw_server: ServerProcess, key: str,
                                                     jobs_stub: jobs_pb2_grpc.JobsStub) -> None:
    import socket as socket_mod

    gw = start_gateway(tmp_path, hw_server.target, "--upload-idle-seconds", "1")
    before = list_job_ids(jobs_stub, key)
    try:
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        head = multipart([("f", "slow.wav", b"RIFF" + b"\0" * 2000)])[:1500]  # a part begun, never finished
        request = (f"POST /enhance HTTP/1.1\r\nHost: {host}\r\nAuthorization: {key}\r\n"
                   f"Content-Type: {MULTIPART_TYPE}\r\nContent-Length: 100000\r\n\r\n").encode() + head
        with socket_mod.create_connection((host, int(port)), timeout=15) as s:
            s.sendall(request)
            started = time.monotonic()
            reply = ""  # the client says nothing more; read the whole reply
            while "REQUEST_TIMEOUT" not in reply and time.monotonic() - started < 10:
                data = s.recv(65536)
                if not data:
                    break
                reply += data.decode(errors="replace")
        assert reply.startswith("HTTP/1.1 408"), reply[:200]
        assert "REQUEST_TIMEOUT" in reply and time.monotonic() - started < 10
        assert list_job_ids(jobs_stub, key) == before  # the held job was cancelled
    finally:
        assert gw.stop() == 0
