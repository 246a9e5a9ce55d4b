"""Hostile HTTP requests against the real gateway and server (issue: reliability and security)."""

from __future__ import annotations

import httpx
from test_gateway import (  # noqa: F401 (fixtures)
    MULTIPART_TYPE,
    Audio,
    assert_error,
    audio_dir,
    auth,
    gateway,
    http,
    hw_server,
    jobs_stub,
    key,
    list_job_ids,
    multipart,
    secret_file,
    wait_completed,
    wav16,
)

from hushwire.v1 import jobs_pb2_grpc


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
