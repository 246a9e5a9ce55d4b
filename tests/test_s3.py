"""Blobs in an S3-compatible store (``--blob-url s3://...``), against a real SeaweedFS with SigV4.

The blob-store interface is checked on both stores with the same test; the server is checked end
to end: a job through S3 gives the same bytes as through the file store, cancelling removes its
objects, a refused upload leaves none, and start-up problems are one line and a non-zero exit.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT, ServerProcess, create_key, free_port, run_cli, start_server
from pg_fixtures import fresh_database_url
from s3_fixtures import S3Server, fresh_blob_url, start_seaweedfs, stored_blobs

from client import HushwireClientError, JobsClient
from client.jobs import STATUS_NAMES
from hushwire.settings import ConfigError
from hushwire.v1 import jobs_pb2
from server.backends import open_blob_url
from server.blobs import BlobNotFound, BlobStore, BlobStoreError, LocalBlobs

pytest.importorskip("boto3", reason="boto3 is not installed: pip install -e '.[test]'")

from server.s3 import MULTIPART_BYTES, S3Blobs, parse_s3_url  # noqa: E402  (needs boto3)


def _noise_wav(path: Path, seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> Path:
    x = (np.random.default_rng(seed).standard_normal((int(rate * seconds), channels)) * 0.03).astype(np.float32)
    sf.write(str(path), x, rate, subtype="PCM_16")
    return path


def _files(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.is_file()] if d.exists() else []


# -- the blob-store interface, on both stores ----------------------------------------------------------


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "file":
        blobs = open_blob_url(f"file://{tmp_path / 'blobs'}", tmp_path)
    else:
        s3: S3Server = request.getfixturevalue("s3_server")
        blobs = open_blob_url(s3.url(prefix="some/prefix"), tmp_path)
    blobs.check()
    return blobs


def test_blob_store_write_read_size_exists_delete(store: BlobStore, tmp_path: Path) -> None:
    small = b"RIFF" + os.urandom(1000)
    with store.writer("uploads/a") as f:
        f.write(small)
    assert store.exists("uploads/a") and store.size("uploads/a") == len(small)
    with store.open("uploads/a") as r:
        assert r.size == len(small)
        assert r.read(10) + r.read(10**6) == small
    with store.local_copy("uploads/a") as path:
        assert path.read_bytes() == small

    # Over the multipart threshold: parts are uploaded in parallel and the object appears whole.
    big = os.urandom(2 * MULTIPART_BYTES + 12345)
    tmp = store.temp_path("results/b")
    tmp.write_bytes(big)
    store.commit(tmp, "results/b")
    assert not tmp.exists()
    assert store.size("results/b") == len(big)
    with store.open("results/b") as r:
        got = b"".join(iter(lambda: r.read(256 * 1024), b""))
    assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()

    # A writer whose block fails stores nothing.
    with pytest.raises(RuntimeError), store.writer("uploads/c") as f:
        f.write(b"half of it")
        raise RuntimeError("client went away")
    assert not store.exists("uploads/c")

    for name in ("uploads/a", "results/b"):
        store.delete(name)
        assert not store.exists(name)
        with pytest.raises(BlobNotFound):
            store.size(name)
        with pytest.raises(BlobNotFound):
            store.open(name)
        with pytest.raises(BlobNotFound), store.local_copy(name):
            pass
        store.delete(name)  # deleting a missing blob is fine
    assert not [p for p in _files(store.scratch_dir) if p.name.endswith(".tmp")], "temporary files left behind"
    assert open_blob_url(store.url, tmp_path).url == store.url  # what the worker processes reopen


def test_s3_objects_live_under_the_prefix(s3_server: S3Server, tmp_path: Path) -> None:
    url = s3_server.url(prefix="tenant/a")
    blobs = S3Blobs.from_url(url, tmp_path)
    blobs.check()
    with blobs.writer("uploads/x") as f:
        f.write(b"x")
    assert s3_server.keys(url) == ["tenant/a/uploads/x"]
    bucket, _, _, _ = parse_s3_url(url)
    assert s3_server.keys(f"s3://{bucket}?endpoint={s3_server.endpoint}") == ["tenant/a/uploads/x"]


def test_missing_bucket_is_created(s3_server: S3Server, tmp_path: Path) -> None:
    url = s3_server.url()
    bucket, _, _, _ = parse_s3_url(url)
    client = s3_server.client()
    assert bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}
    S3Blobs.from_url(url, tmp_path).check()
    client.head_bucket(Bucket=bucket)  # raises if it is missing
    S3Blobs.from_url(url, tmp_path).check()  # and an existing one is fine (a second replica)
    assert s3_server.keys(url) == [], "the write check left its test object behind"


def test_check_sweeps_only_stale_scratch_files(s3_server: S3Server, s3_blob_url: str, tmp_path: Path) -> None:
    blobs = S3Blobs.from_url(s3_blob_url, tmp_path / "spool")
    stale, fresh, other = (tmp_path / "spool" / n for n in ("old.tmp", "new.tmp", "keep.wav"))
    for p in (stale, fresh, other):
        p.write_bytes(b"x")
    two_days_ago = time.time() - 2 * 86400
    for p in (stale, other):
        os.utime(p, (two_days_ago, two_days_ago))
    blobs.check()
    assert not stale.exists() and fresh.exists() and other.exists()


def test_wrong_secret_is_refused(s3_server: S3Server, s3_blob_url: str, tmp_path: Path) -> None:
    good = S3Blobs.from_url(s3_blob_url, tmp_path)
    good.check()
    with good.writer("uploads/secret") as f:
        f.write(b"private audio")
    secret = s3_server.secret_key
    bad = secret[:-1] + ("y" if secret.endswith("x") else "x")  # one character off
    wrong = S3Blobs.from_url(s3_blob_url, tmp_path, credentials={
        "aws_access_key_id": s3_server.access_key, "aws_secret_access_key": bad})
    with pytest.raises(BlobStoreError, match="access denied"):
        wrong.check()
    with pytest.raises(BlobStoreError, match="SignatureDoesNotMatch|403"):
        wrong.open("uploads/secret")
    with pytest.raises(BlobStoreError):
        wrong.delete("uploads/secret")
    assert good.open("uploads/secret").read(100) == b"private audio"  # still there, unchanged
    good.delete("uploads/secret")


def test_a_vanished_bucket_is_a_store_error_not_a_missing_blob(s3_server: S3Server, tmp_path: Path) -> None:
    url = s3_server.url()
    blobs = S3Blobs.from_url(url, tmp_path)
    blobs.check()
    s3_server.client().delete_bucket(Bucket=parse_s3_url(url)[0])
    with pytest.raises(BlobStoreError, match="NoSuchBucket"):  # not JOB_NOT_FOUND: the operator must act
        blobs.open("results/x")
    # (A write would succeed here: SeaweedFS creates a missing bucket on upload for admin identities.)


def test_unreachable_store_is_a_store_error(tmp_path: Path) -> None:
    blobs = S3Blobs.from_url(f"s3://nobody-home?endpoint=http://127.0.0.1:{free_port()}", tmp_path,
                             credentials={"aws_access_key_id": "a", "aws_secret_access_key": "b"})
    with pytest.raises(BlobStoreError, match="127.0.0.1"):
        blobs.check()


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("s3://ab?endpoint=http://127.0.0.1:9000", "not a valid bucket name"),
        ("s3://Upper?endpoint=http://127.0.0.1:9000", "not a valid bucket name"),
        ("s3://key:secret@bucket?endpoint=http://127.0.0.1:9000", "AWS_SECRET_ACCESS_KEY"),
        ("s3://bucket?endpoint=http://127.0.0.1:9000&colour=blue", "unknown parameter(s) colour"),
        ("s3://bucket?endpoint=", "give endpoint exactly once"),
        ("s3://bucket?endpoint=ftp://127.0.0.1", "endpoint must look like"),
        ("s3://bucket?endpoint=http://a:1&endpoint=http://b:2", "exactly once"),
        ("gs://bucket", "unsupported blob URL"),
    ],
)
def test_bad_blob_urls_are_config_errors(url: str, needle: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        open_blob_url(url, tmp_path)
    assert needle in str(info.value)
    assert "secret" not in str(info.value).replace("AWS_SECRET_ACCESS_KEY", "")  # never echo a credential


def test_s3_url_forms(tmp_path: Path) -> None:
    assert parse_s3_url("s3://bucket?endpoint=http://h:9000") == ("bucket", "", "http://h:9000", None)
    assert parse_s3_url("s3://b.c-d/p/q/?endpoint=https://h&region=eu-west-1") == (
        "b.c-d", "p/q/", "https://h", "eu-west-1")
    assert parse_s3_url("s3://bucket") == ("bucket", "", None, None)  # AWS itself
    assert isinstance(open_blob_url(None, tmp_path), LocalBlobs)


# -- a real hushwire server on S3 ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_hushwire(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    data_dir = tmp_path_factory.mktemp("s3data")
    url = s3_server.url()  # its own bucket, which the server creates
    srv = start_server(data_dir, "--blob-url", url, "--workers", "1")
    yield srv, url
    assert srv.stop() == 0, srv.log


@pytest.fixture(scope="module")
def s3_key(s3_hushwire: tuple[ServerProcess, str]) -> str:
    return create_key(s3_hushwire[0].data_dir, "--name", "s3")


def _rows(srv: ServerProcess) -> int:
    con = sqlite3.connect(srv.data_dir / "hushwire.db")
    try:
        return int(con.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
    finally:
        con.close()


def _no_local_blobs(srv: ServerProcess) -> None:
    assert not _files(srv.data_dir / "blobs"), "an S3-backed server wrote to the local blob folder"
    assert not _files(srv.data_dir / "spool"), "temporary files left in the spool folder"


def test_job_through_s3_equals_the_file_store(s3_server: S3Server, s3_hushwire: tuple[ServerProcess, str],
                                              s3_key: str, server: ServerProcess, api_key: str,
                                              tmp_path: Path) -> None:
    srv, url = s3_hushwire
    src = _noise_wav(tmp_path / "in.flac", 3.0, 48000, 2)
    with JobsClient(srv.target, s3_key) as c:
        job = c.submit(src, file_key="f")
        assert f"uploads/{job.job_id}" in s3_server.keys(url)
        done = c.wait(job.job_id, timeout=60)
        assert STATUS_NAMES[done.status] == "completed", done.error
        info, via_s3 = c.download(job.job_id)
        with JobsClient(srv.target, None) as anon:  # the signed result URL's token works the same
            _, by_token = anon.download(job.job_id, token=done.result.token)
    assert info.size_bytes == len(via_s3) and by_token == via_s3
    keys = s3_server.keys(url)
    assert f"uploads/{job.job_id}" in keys
    assert [k for k in keys if k.startswith(f"results/{job.job_id}-")], keys
    with JobsClient(server.target, api_key) as c:  # the embedded file store
        done = c.wait(c.submit(src, file_key="f").job_id, timeout=60)
        _, via_file = c.download(done.job_id)
    assert hashlib.sha256(via_s3).hexdigest() == hashlib.sha256(via_file).hexdigest()
    assert sf.info(io.BytesIO(via_s3)).frames == 3 * 48000
    _no_local_blobs(srv)


def test_cancel_deletes_the_objects(s3_server: S3Server, s3_hushwire: tuple[ServerProcess, str], s3_key: str,
                                    tmp_path: Path) -> None:
    srv, url = s3_hushwire
    src = _noise_wav(tmp_path / "c.wav", 0.5)
    with JobsClient(srv.target, s3_key) as c:
        before = s3_server.keys(url)
        held = c.submit(src, hold=True)
        assert set(s3_server.keys(url)) - set(before) == {f"uploads/{held.job_id}"}
        c.cancel(held.job_id)
        assert s3_server.keys(url) == before

        done = c.wait(c.submit(src).job_id, timeout=60)  # a finished job: upload and result
        assert STATUS_NAMES[done.status] == "completed"
        assert len(set(s3_server.keys(url)) - set(before)) == 2
        c.cancel(done.job_id)
        assert s3_server.keys(url) == before
        with pytest.raises(HushwireClientError) as info:
            c.download(done.job_id)
        assert info.value.code == "JOB_NOT_FOUND"
    _no_local_blobs(srv)


def test_refused_uploads_leave_no_objects(s3_server: S3Server, s3_hushwire: tuple[ServerProcess, str],
                                          s3_key: str, tmp_path: Path) -> None:
    srv, url = s3_hushwire
    before, rows = s3_server.keys(url), _rows(srv)
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio at all " * 100)
    full = _noise_wav(tmp_path / "full.wav", 1.0).read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full[: len(full) // 2])
    with JobsClient(srv.target, s3_key) as c:
        for path, needle in ((junk, "not a readable audio file"), (cut, "header declares")):
            with pytest.raises(HushwireClientError) as info:
                c.submit(path)
            assert info.value.code == "INVALID_FILE" and needle in info.value.msg
    assert s3_server.keys(url) == before and _rows(srv) == rows
    _no_local_blobs(srv)


def test_upload_over_the_limit_leaves_no_objects(s3_server: S3Server, tmp_path: Path) -> None:
    url = s3_server.url()
    key = create_key(tmp_path)
    srv = start_server(tmp_path, "--blob-url", url, "--workers", "1", "--max-upload-bytes", "100000")
    try:
        with JobsClient(srv.target, key) as c, pytest.raises(HushwireClientError) as info:
            # no size hint: refused mid-stream, after some chunks were spooled
            c.submit(io.BytesIO(_noise_wav(tmp_path / "big.wav", 4.0).read_bytes()))
        assert info.value.code == "FILE_TOO_LARGE"
        assert s3_server.keys(url) == []
        _no_local_blobs(srv)
    finally:
        assert srv.stop() == 0


@pytest.mark.slow
def test_sigkill_mid_job_exposes_no_partial_result(s3_server: S3Server, tmp_path: Path) -> None:
    url = s3_server.url()
    key = create_key(tmp_path)
    src = _noise_wav(tmp_path / "long.wav", 120.0, 48000, 2)  # 23 MB: a multipart upload
    srv = start_server(tmp_path, "--blob-url", url, "--workers", "1")
    with JobsClient(srv.target, key) as c:
        job = c.submit(src)
        deadline = time.monotonic() + 60
        while (j := c.get(job.job_id)).status != jobs_pb2.JOB_STATUS_PROCESSING or j.progress < 0.05:
            assert j.status not in (jobs_pb2.JOB_STATUS_COMPLETED, jobs_pb2.JOB_STATUS_FAILED), j
            assert time.monotonic() < deadline, "job never started processing"
            time.sleep(0.05)
    srv.stop(sig=signal.SIGKILL)
    assert s3_server.keys(url) == [f"uploads/{job.job_id}"], "a partial result is visible in the store"
    srv2 = start_server(tmp_path, "--blob-url", url, "--workers", "1")
    try:
        with JobsClient(srv2.target, key) as c:
            done = c.wait(job.job_id, timeout=240)
            assert STATUS_NAMES[done.status] == "completed", done.error
            info, data = c.download(job.job_id)
        assert sf.info(io.BytesIO(data)).frames == 120 * 48000 and info.size_bytes == len(data)
        assert len([k for k in s3_server.keys(url) if k.startswith("results/")]) == 1
    finally:
        assert srv2.stop() == 0, srv2.log


def test_postgresql_and_s3_together(request: pytest.FixtureRequest, s3_server: S3Server, tmp_path: Path) -> None:
    """The scaled-out configuration: jobs and keys in PostgreSQL, blobs in S3, nothing in the data dir."""
    database = fresh_database_url(request, "postgresql", tmp_path)
    blobs = fresh_blob_url(request, "s3", tmp_path)
    stores = ("--database-url", database, "--blob-url", blobs)
    key = create_key(tmp_path, *stores)
    srv = start_server(tmp_path, *stores, "--workers", "1")
    try:
        src = _noise_wav(tmp_path / "pg.wav", 1.0)
        with JobsClient(srv.target, key) as c:
            done = c.wait(c.submit(src).job_id, timeout=60)
            assert STATUS_NAMES[done.status] == "completed", done.error
            info, data = c.download(done.job_id)
            assert sf.info(io.BytesIO(data)).frames == 16000 and info.size_bytes == len(data)
            assert len(stored_blobs(request, blobs)) == 2
            c.cancel(done.job_id)
        assert stored_blobs(request, blobs) == []
        assert not (tmp_path / "hushwire.db").exists()
        _no_local_blobs(srv)
    finally:
        assert srv.stop() == 0, srv.log


# -- start-up: one line and a non-zero exit, never a traceback ----------------------------------------


@pytest.mark.parametrize("case", ["wrong secret", "unreachable", "no credentials", "bad url"])
def test_store_problems_stop_the_server_with_one_line(case: str, s3_server: S3Server, tmp_path: Path) -> None:
    url, env = s3_server.url(), s3_server.env()
    if case == "wrong secret":
        env["AWS_SECRET_ACCESS_KEY"] = "not-" + s3_server.secret_key
        needle = "access denied (HTTP 403); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    elif case == "unreachable":
        url = f"s3://bucket?endpoint=http://127.0.0.1:{free_port()}"
        needle = f"127.0.0.1:{url.rsplit(':', 1)[1]}"
    elif case == "no credentials":
        del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
        env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")
        needle = "no credentials; set AWS_ACCESS_KEY_ID"
    else:
        url += "&colour=blue"
        needle = "unknown parameter(s) colour"
    t0 = time.monotonic()
    proc = run_cli("serve", "--port", "0", "--data-dir", str(tmp_path), "--blob-url", url, env=env, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hushwire: ") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and s3_server.secret_key not in proc.stderr
    assert time.monotonic() - t0 < 30
    if case == "wrong secret":
        assert s3_server.keys(url) == []  # nothing was created with the bad signature


def test_s3_url_without_boto3_says_which_extra(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['boto3'] = None\n"  # as if the `scale` extra were not installed
            "from cli.main import main\n"
            f"sys.exit(main(['serve', '--port', '0', '--data-dir', {str(tmp_path)!r}, "
            "'--blob-url', 's3://bucket?endpoint=http://127.0.0.1:9']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "hushwire: s3:// blob URLs need boto3: pip install 'hushwire[scale]'"


# -- the store going away while the server runs -----------------------------------------------------------


@pytest.mark.slow
def test_store_outage_is_service_unavailable_and_the_server_survives(tmp_path: Path) -> None:
    s3 = start_seaweedfs(tmp_path / "weed2")  # a second, private instance: this test stops it
    try:
        url, env = s3.url(), s3.env()
        key = create_key(tmp_path)
        srv = start_server(tmp_path, "--blob-url", url, "--workers", "1", env=env)
        try:
            src = _noise_wav(tmp_path / "o.wav", 1.0)
            with JobsClient(srv.target, key) as c:
                done = c.wait(c.submit(src).job_id, timeout=60)
                held = c.submit(src, hold=True)
                assert s3.stop() == 0
                with pytest.raises(HushwireClientError) as info:
                    c.submit(src)
                assert info.value.code == "SERVICE_UNAVAILABLE" and "blob store" in info.value.msg
                assert info.value.status == grpc.StatusCode.UNAVAILABLE
                with pytest.raises(HushwireClientError) as info:
                    c.download(done.job_id)
                assert info.value.code == "SERVICE_UNAVAILABLE"
                c.start(held.job_id)
                failed = c.wait(held.job_id, timeout=60)
                assert STATUS_NAMES[failed.status] == "failed", failed
                assert failed.error.code == "SERVICE_UNAVAILABLE" and "blob store" in failed.error.msg
                assert c.get(done.job_id).status == done.status  # the server still answers
            _no_local_blobs(srv)
        finally:
            assert srv.stop() == 0, srv.log
    finally:
        s3.stop()
