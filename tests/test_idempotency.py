"""``Idempotency-Key`` on ``POST /enhance`` and ``JobSpec.idempotency_key`` on ``Jobs.SubmitJob`` (issue
#18, item 5), with a real server and a real gateway: a retry gets the first reply again and creates
nothing; the key with another request, or while the first still runs, is 409 ``IDEMPOTENCY_CONFLICT``;
failures are not remembered; keys are per user and capped. The same across two replicas on one
database: tests/test_replicas.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import ServerProcess, create_key, start_server
from test_gateway import GatewayProcess, start_gateway

from client import HushwireClientError, JobsClient

MAX_KEYS = 6


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, GatewayProcess]]:
    data = tmp_path_factory.mktemp("data")
    srv = start_server(data, "--max-idempotency-keys-per-user", str(MAX_KEYS), "--workers", "1")
    gw = start_gateway(data, srv.target)
    yield srv, gw
    assert gw.stop() == 0, gw.log
    assert srv.stop() == 0, srv.log


@pytest.fixture()
def user(stack: tuple[ServerProcess, GatewayProcess]) -> str:
    """A fresh user's key (keys and their cap are per user)."""
    return create_key(stack[0].data_dir, "--name", "idem")


@pytest.fixture()
def http(stack: tuple[ServerProcess, GatewayProcess]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack[1].url, timeout=60, trust_env=False) as client:
        yield client


def _wav(seconds: float, seed: int) -> bytes:
    import io

    buf = io.BytesIO()
    x = (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.05).astype(np.float32)
    sf.write(buf, x, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


A, B, C = _wav(0.3, 1), _wav(0.2, 2), _wav(0.25, 3)


def _post(http: httpx.Client, key: str, idem: str | None, files: list[tuple[str, tuple[str, bytes]]],
          option: str | None = "6") -> httpx.Response:
    headers = {"Authorization": key}
    if idem is not None:
        headers["Idempotency-Key"] = idem
    return http.post("/enhance", headers=headers, files=files,
                     data={"attenuation_limit_db": option} if option is not None else None)


def _jobs(stack: tuple[ServerProcess, GatewayProcess], key: str) -> list[str]:
    with JobsClient(stack[0].target, key) as c:
        return sorted(j.job_id for j in c.list())


FILES = [("a", ("one.wav", A)), ("a", ("two.wav", B)), ("b", ("three.wav", C))]


def test_a_retry_gets_the_same_reply_and_creates_nothing(stack: tuple[ServerProcess, GatewayProcess],
                                                        http: httpx.Client, user: str) -> None:
    first = _post(http, user, "retry-1", FILES)
    assert first.status_code == 200, first.text
    reply = first.json()
    assert isinstance(reply["a"], list) and len(reply["a"]) == 2 and isinstance(reply["b"], str)
    jobs = _jobs(stack, user)
    assert jobs == sorted([*reply["a"], reply["b"]])
    again = _post(http, user, "retry-1", FILES)
    assert again.status_code == 200, again.text
    assert again.content == first.content   # the very same JSON
    assert again.request.headers["content-type"] != first.request.headers["content-type"]  # new boundary
    assert _jobs(stack, user) == jobs   # nothing new
    # The jobs of the first request run normally.
    with JobsClient(stack[0].target, user) as c:
        for job_id in jobs:
            assert c.wait(job_id, timeout=60).options.attenuation_limit_db == 6.0


@pytest.mark.parametrize("change", ["content", "file name", "field name", "order", "option", "fewer files"])
def test_the_key_with_a_different_request_is_409(stack: tuple[ServerProcess, GatewayProcess], http: httpx.Client,
                                                  user: str, change: str) -> None:
    assert _post(http, user, "k", FILES).status_code == 200
    before = _jobs(stack, user)
    files, option = list(FILES), "6"
    if change == "content":
        files[2] = ("b", ("three.wav", _wav(0.25, 4)))
    elif change == "file name":
        files[2] = ("b", ("Three.wav", C))
    elif change == "field name":
        files[2] = ("c", ("three.wav", C))
    elif change == "order":
        files[0], files[1] = files[1], files[0]
    elif change == "option":
        option = "7"
    else:
        files = files[:2]
    r = _post(http, user, "k", files, option)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert _jobs(stack, user) == before


def test_a_retry_while_the_first_request_still_runs_is_409(stack: tuple[ServerProcess, GatewayProcess],
                                                          http: httpx.Client, user: str) -> None:
    go = threading.Event()
    boundary = "idem-slow"

    def slow_body() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"a\"; filename=\"one.wav\"\r\n"
               "Content-Type: audio/wav\r\n\r\n").encode() + A + (
               f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"b\"; filename=\"three.wav\"\r\n"
               "Content-Type: audio/wav\r\n\r\n").encode() + C[:1000]
        go.wait(30)
        yield C[1000:] + f"\r\n--{boundary}--\r\n".encode()

    results: dict[str, httpx.Response] = {}

    def first() -> None:
        with httpx.Client(base_url=stack[1].url, timeout=60, trust_env=False) as c:
            results["first"] = c.post("/enhance", content=slow_body(), headers={
                "Authorization": user, "Idempotency-Key": "busy",
                "Content-Type": f"multipart/form-data; boundary={boundary}"})

    same = [("a", ("one.wav", A)), ("b", ("three.wav", C))]
    submitted = stack[0].log.count("job submitted")
    t = threading.Thread(target=first)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while stack[0].log.count("job submitted") == submitted:   # its first file is in: it holds the key
            assert time.monotonic() < deadline, "the first request's first file never arrived"
            time.sleep(0.05)
        r = _post(http, user, "busy", same, None)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "IDEMPOTENCY_CONFLICT" and "still running" in r.json()["error"]["msg"]
    finally:
        go.set()
        t.join(30)
    assert results["first"].status_code == 200, results["first"].text
    retry = _post(http, user, "busy", same, None)
    assert retry.status_code == 200 and retry.content == results["first"].content
    assert len(_jobs(stack, user)) == 2


def test_a_failed_request_is_not_remembered(stack: tuple[ServerProcess, GatewayProcess], http: httpx.Client,
                                           user: str) -> None:
    bad = _post(http, user, "fix-me", [("a", ("one.wav", A)), ("b", ("notes.wav", b"not audio at all" * 20))])
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_FILE", bad.text
    assert _jobs(stack, user) == []
    good = _post(http, user, "fix-me", [("a", ("one.wav", A))])
    assert good.status_code == 200, good.text
    assert _jobs(stack, user) == [good.json()["a"]]


def test_keys_are_per_user(stack: tuple[ServerProcess, GatewayProcess], http: httpx.Client, user: str) -> None:
    other = create_key(stack[0].data_dir, "--name", "other")
    mine, theirs = _post(http, user, "shared", FILES), _post(http, other, "shared", FILES)
    assert mine.status_code == theirs.status_code == 200
    assert set(_jobs(stack, user)).isdisjoint(_jobs(stack, other)) and len(_jobs(stack, other)) == 3


def test_keys_are_capped_per_user_and_checked(stack: tuple[ServerProcess, GatewayProcess], http: httpx.Client,
                                             user: str) -> None:
    files = [("a", ("one.wav", B))]
    for i in range(MAX_KEYS):
        assert _post(http, user, f"cap-{i}", files, None).status_code == 200
    r = _post(http, user, f"cap-{MAX_KEYS}", files, None)
    assert r.status_code == 429 and r.json()["error"]["code"] == "RATE_LIMITED", r.text
    assert _post(http, user, "cap-0", files, None).status_code == 200   # a retry still works at the cap
    assert len(_jobs(stack, user)) == MAX_KEYS
    for bad in ("x" * 256, "two words", ""):
        r = _post(http, create_key(stack[0].data_dir), bad, files, None)
        assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_REQUEST", r.text
        assert len(r.json()["error"]["msg"]) < 120


def test_grpc_submit_with_an_idempotency_key(stack: tuple[ServerProcess, GatewayProcess], tmp_path: Path,
                                            user: str) -> None:
    src, other = tmp_path / "a.wav", tmp_path / "b.wav"
    src.write_bytes(A)
    other.write_bytes(B)
    with JobsClient(stack[0].target, user) as c:
        first = c.submit(src, idempotency_key="grpc-1", attenuation_limit_db=3.0)
        again = c.submit(src, idempotency_key="grpc-1", attenuation_limit_db=3.0)
        assert again.job_id == first.job_id
        assert [j.job_id for j in c.list()] == [first.job_id]
        for call in (lambda: c.submit(other, file_name="a.wav", idempotency_key="grpc-1", attenuation_limit_db=3.0),
                     lambda: c.submit(src, idempotency_key="grpc-1")):
            with pytest.raises(HushwireClientError) as info:
                call()
            assert info.value.code == "IDEMPOTENCY_CONFLICT" and info.value.status == grpc.StatusCode.ALREADY_EXISTS
        assert [j.job_id for j in c.list()] == [first.job_id]


def test_openapi_documents_the_header_and_the_409(http: httpx.Client) -> None:
    op = http.get("/openapi.json").json()["paths"]["/enhance"]["post"]
    [param] = [p for p in op["parameters"] if p["name"] == "Idempotency-Key"]
    assert param["in"] == "header" and not param["required"] and "24 h" in param["description"]
    assert "IDEMPOTENCY_CONFLICT" in op["responses"]["409"]["description"]


def test_a_reply_lost_on_the_way_back_is_not_a_second_set_of_jobs(stack: tuple[ServerProcess, GatewayProcess],
                                                                  http: httpx.Client, user: str) -> None:
    """The issue's case: the client sends the whole upload and hangs up before the reply. Its retry with
    the same key gets the reply of the request that ran, and the user has each file's job once."""
    import socket

    req = http.build_request("POST", "/enhance", headers={"Authorization": user, "Idempotency-Key": "lost"},
                             files=FILES, data={"attenuation_limit_db": "6"})
    body = req.read()
    host, port = stack[1].url.removeprefix("http://").rsplit(":", 1)
    head = "".join(f"{k}: {v}\r\n" for k, v in req.headers.items() if k.lower() != "host")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"POST /enhance HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode() + body)
    # Gone before the reply. The gateway finishes the request (or gives the key up if it was cut short).
    deadline = time.monotonic() + 30
    while (r := _post(http, user, "lost", FILES)).status_code == 409:   # the first one still runs
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert _jobs(stack, user) == sorted([*reply["a"], reply["b"]])   # three jobs, not six
    again = _post(http, user, "lost", FILES)
    assert again.content == r.content
