"""File jobs over gRPC, end to end: a real server with worker processes, on each pair of stores.

The module's server runs on the embedded stores (a SQLite file and a blob folder) and on the
scale-out ones (a real PostgreSQL and a real S3-compatible server, SeaweedFS): ``stores``. The
function-scoped tests that restart servers run on each database (``database_url``) with file blobs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from conftest import ServerProcess, create_key, energy_db, eval_pair, start_server
from pg_fixtures import fresh_database_url
from s3_fixtures import fresh_blob_url, stored_blobs

from client import HushwireClientError, JobsClient
from client.jobs import STATUS_NAMES
from hushwire.v1 import jobs_pb2
from server.dsp import Denoiser
from server.store import Store

STORE_PAIRS = {"sqlite+file": ("sqlite", "file"), "postgresql+s3": ("postgresql", "s3")}


@pytest.fixture(scope="module", params=list(STORE_PAIRS))
def stores(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(database URL, blob URL) of fresh, empty stores: embedded, or PostgreSQL + S3."""
    database, blobs = STORE_PAIRS[request.param]
    directory = tmp_path_factory.mktemp("stores")
    return fresh_database_url(request, database, directory), fresh_blob_url(request, blobs, directory)


@pytest.fixture(scope="module")
def store_args(stores: tuple[str, str]) -> tuple[str, ...]:
    """The store flags every process of this module's server gets (``serve`` and ``keys``)."""
    return ("--database-url", stores[0], "--blob-url", stores[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, store_args: tuple[str, ...]) -> Iterator[ServerProcess]:
    """conftest's module server, on each database."""
    data_dir = tmp_path_factory.mktemp("data")
    srv = start_server(data_dir, *store_args)
    yield srv
    assert srv.stop() == 0, srv.log


@pytest.fixture(scope="module")
def api_key(server: ServerProcess, store_args: tuple[str, ...]) -> str:
    return create_key(server.data_dir, *store_args, "--name", "tester")


@pytest.fixture(scope="module")
def jobs(server: ServerProcess, api_key: str) -> JobsClient:
    with JobsClient(server.target, api_key) as c:
        yield c


def _noise(rate: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((int(rate * seconds), channels)) * 0.03).astype(np.float32)


def _write(path: Path, x: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> Path:
    sf.write(str(path), x, rate, format=fmt, subtype=subtype)
    return path


def _stored(request: pytest.FixtureRequest, stores: tuple[str, str]) -> tuple[int, list[str]]:
    """Job rows in the database and blobs in the blob store."""
    store = Store(stores[0])
    try:
        rows = sum(store.job_stats()[0].values())
    finally:
        store.close()
    return rows, stored_blobs(request, stores[1])


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate", "channels"),
    [
        ("WAV", "PCM_16", 16000, 1),
        ("FLAC", "PCM_24", 48000, 2),
        ("WAV", "FLOAT", 22050, 1),
        ("WAV", "PCM_U8", 8000, 1),
        ("OGG", "VORBIS", 44100, 1),
        ("WAV", "DOUBLE", 96000, 1),
        ("MP3", "MPEG_LAYER_III", 44100, 2),
        ("OGG", "OPUS", 48000, 1),
        ("WAV", "PCM_32", 32000, 8),
    ],
)
def test_job_keeps_format_and_denoises(jobs: JobsClient, tmp_path: Path, fmt: str, subtype: str, rate: int,
                                       channels: int) -> None:
    x = _noise(rate, 1.5, channels)
    src = _write(tmp_path / f"in.{fmt.lower()}", x, rate, fmt, subtype)
    job = jobs.submit(src, file_key="file_key")
    assert len(job.job_id) == 22 and base64.urlsafe_b64decode(job.job_id + "==")
    assert job.status == jobs_pb2.JOB_STATUS_PENDING and job.file_name == src.name and job.file_key == "file_key"
    assert job.billed_time == pytest.approx(1.5 * channels, abs=0.01)
    assert job.model == ("model_16k" if rate <= 16000 else "model_48k")
    done = jobs.wait(job.job_id, timeout=60)
    assert STATUS_NAMES[done.status] == "completed", done.error
    assert done.progress == 1.0 and done.result.token
    info, data = jobs.download(job.job_id)
    assert info.file_name == f"in_enhanced.{fmt.lower()}"
    out = sf.info(io.BytesIO(data))
    assert (out.format, out.subtype, out.samplerate, out.channels, out.frames) == (
        fmt, subtype, rate, channels, x.shape[0])
    y, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    assert energy_db(y[rate // 2 :]) < energy_db(x[rate // 2 :]) - 10.0


def test_job_equals_the_live_stream_within_one_lsb(jobs: JobsClient, tmp_path: Path) -> None:
    noisy_path, _ = eval_pair("babble_p05")
    job = jobs.wait(jobs.submit(noisy_path, attenuation_limit_db=12.0).job_id, timeout=60)
    _, data = jobs.download(job.job_id)
    y, _ = sf.read(io.BytesIO(data), dtype="int16")
    x, rate = sf.read(str(noisy_path), dtype="float32", always_2d=True)
    d = Denoiser(rate, 1, 12.0)
    expect = np.concatenate([d.process(x), d.flush()])[d.latency_samples : d.latency_samples + len(x), 0]
    expect_i16 = np.clip(np.rint(expect * 32768.0), -32768, 32767)
    assert y.shape == expect_i16.shape
    assert np.max(np.abs(y.astype(int) - expect_i16.astype(int))) <= 1


def test_download_by_token_without_key(server: ServerProcess, jobs: JobsClient, tmp_path: Path) -> None:
    job = jobs.wait(jobs.submit(_write(tmp_path / "a.wav", _noise(16000, 0.5), 16000)).job_id, timeout=60)
    with JobsClient(server.target, None) as anon:
        info, path = anon.download(job.job_id, tmp_path, token=job.result.token)
        assert Path(path).name == "a_enhanced.wav" and sf.info(str(path)).frames == 8000
        tampered = f"{job.result.expires}.{job.result.sig[:-2]}xx"
        for bad in (tampered, f"{job.result.expires + 1}.{job.result.sig}", "garbage", ""):
            with pytest.raises(HushwireClientError) as info_:
                anon.download(job.job_id, token=bad or "0.x")
            assert info_.value.code == "JOB_NOT_FOUND"
        # A validly signed but expired URL: sign it with the server's secret, as the server would.
        secret = (server.data_dir / "signing_secret").read_bytes().strip()
        expires = int(time.time()) - 10
        mac = hmac.new(secret, f"{job.job_id}.{expires}".encode(), hashlib.sha256).digest()
        sig = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
        with pytest.raises(HushwireClientError) as info_:
            anon.download(job.job_id, token=f"{expires}.{sig}")
        assert info_.value.code == "RESULT_URL_EXPIRED"
        with pytest.raises(HushwireClientError) as info_:
            anon.get(job.job_id)
        assert info_.value.code == "API_KEY_NOT_FOUND"


@pytest.mark.parametrize(
    ("make", "code", "needle"),
    [
        (lambda p: p.write_bytes(b""), "INVALID_FILE", "empty"),
        (lambda p: p.write_text("definitely not audio " * 50), "INVALID_FILE", "not a readable audio file"),
        (lambda p: _write(p, np.zeros((0, 1), np.float32), 16000), "INVALID_FILE", "no audio frames"),
        (lambda p: _write(p, _noise(4000, 0.2), 4000), "INVALID_FILE", "outside 8000-192000"),
        (lambda p: _write(p, _noise(16000, 0.1, 9), 16000), "INVALID_FILE", "9 channels"),
        (lambda p: _write(p, _noise(16000, 0.1), 16000, "WAV", "ULAW"), "INVALID_FILE", "ULAW"),
    ],
)
def test_refused_uploads_store_nothing(request: pytest.FixtureRequest, jobs: JobsClient, tmp_path: Path, make,
                                       code: str, needle: str, stores: tuple[str, str]) -> None:
    before = _stored(request, stores)
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(HushwireClientError) as info:
        jobs.submit(path)
    assert info.value.code == code and needle in info.value.msg, info.value
    assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert _stored(request, stores) == before


def test_wav_header_claiming_more_data_than_the_file_has(request: pytest.FixtureRequest, jobs: JobsClient,
                                                         tmp_path: Path, stores: tuple[str, str]) -> None:
    full = _write(tmp_path / "full.wav", _noise(16000, 1.0), 16000).read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full[: len(full) // 2])
    before = _stored(request, stores)
    with pytest.raises(HushwireClientError) as info:
        jobs.submit(cut)
    assert info.value.code == "INVALID_FILE" and "header declares 32000 bytes" in info.value.msg
    assert _stored(request, stores) == before


def test_truncated_flac_becomes_a_failed_job(jobs: JobsClient, tmp_path: Path) -> None:
    full = _write(tmp_path / "full.flac", _noise(16000, 4.0), 16000, "FLAC", "PCM_16").read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(full[: len(full) * 2 // 3])
    job = jobs.submit(cut)
    done = jobs.wait(job.job_id, timeout=60)
    assert STATUS_NAMES[done.status] == "failed"
    assert done.error.code == "INVALID_FILE" and done.error.msg
    with pytest.raises(HushwireClientError) as info:
        jobs.download(job.job_id)
    assert info.value.code == "JOB_NOT_FOUND"


def test_limits_refuse_with_file_too_large(tmp_path: Path, database_url: str) -> None:
    key = create_key(tmp_path, "--database-url", database_url)
    srv = start_server(tmp_path, "--database-url", database_url, "--max-upload-bytes", "100000",
                       "--max-upload-seconds", "2")
    try:
        with JobsClient(srv.target, key) as c:
            with pytest.raises(HushwireClientError) as info:
                c.submit(_write(tmp_path / "big.wav", _noise(16000, 3.5), 16000))  # 112 kB
            assert info.value.code == "FILE_TOO_LARGE" and info.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(HushwireClientError) as info:
                c.submit(_write(tmp_path / "long.wav", _noise(8000, 3.0), 8000, "WAV", "PCM_U8"))  # 24 kB, 3 s
            assert info.value.code == "FILE_TOO_LARGE" and "over the limit of 2 s" in info.value.msg
            with pytest.raises(HushwireClientError) as info:  # no size hint: refused mid-stream
                c.submit(io.BytesIO(_write(tmp_path / "big2.wav", _noise(16000, 3.5), 16000).read_bytes()))
            assert info.value.code == "FILE_TOO_LARGE"
        assert not [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    finally:
        assert srv.stop() == 0


def test_other_users_jobs_look_unknown(server: ServerProcess, jobs: JobsClient, tmp_path: Path,
                                      store_args: tuple[str, ...]) -> None:
    job = jobs.submit(_write(tmp_path / "mine.wav", _noise(16000, 0.3), 16000))
    jobs.wait(job.job_id, timeout=60)
    other = create_key(server.data_dir, *store_args, "--name", "mallory")
    with JobsClient(server.target, other) as c:
        for call in (c.get, c.cancel, c.download, c.start):
            with pytest.raises(HushwireClientError) as info:
                call(job.job_id)
            assert info.value.code == "JOB_NOT_FOUND" and info.value.status == grpc.StatusCode.NOT_FOUND
        assert job.job_id not in {j.job_id for j in c.list()}
        with pytest.raises(HushwireClientError) as info:
            c.get("AAAAAAAAAAAAAAAAAAAAAA")
        assert info.value.code == "JOB_NOT_FOUND"


def test_keys_of_one_user_share_jobs(server: ServerProcess, jobs: JobsClient, tmp_path: Path,
                                    store_args: tuple[str, ...]) -> None:
    job = jobs.submit(_write(tmp_path / "x.wav", _noise(16000, 0.3), 16000))
    uid = job.uid
    rotated = create_key(server.data_dir, *store_args, "--user", str(uid))
    with JobsClient(server.target, rotated) as c:
        assert c.get(job.job_id).job_id == job.job_id


def test_hold_start_and_cancel(request: pytest.FixtureRequest, jobs: JobsClient, tmp_path: Path,
                              stores: tuple[str, str]) -> None:
    src = _write(tmp_path / "h.wav", _noise(16000, 0.5), 16000)
    held = jobs.submit(src, hold=True)
    time.sleep(1.0)
    assert jobs.get(held.job_id).status == jobs_pb2.JOB_STATUS_PENDING and jobs.get(held.job_id).held
    started = jobs.start(held.job_id, attenuation_limit_db=0.0)
    assert started.options.attenuation_limit_db == 0.0
    done = jobs.wait(held.job_id, timeout=60)
    _, data = jobs.download(done.job_id)
    y, _ = sf.read(io.BytesIO(data), dtype="int16")
    x, _ = sf.read(str(src), dtype="int16")
    assert np.max(np.abs(y.astype(int) - x.astype(int))) <= 1  # 0 dB limit: pass-through

    before = _stored(request, stores)
    doomed = jobs.submit(src, hold=True)
    assert _stored(request, stores)[0] == before[0] + 1
    jobs.cancel(doomed.job_id)
    assert _stored(request, stores) == before  # row and upload gone
    with pytest.raises(HushwireClientError) as info:
        jobs.get(doomed.job_id)
    assert info.value.code == "JOB_NOT_FOUND"


def test_list_pages_newest_first(server: ServerProcess, tmp_path: Path, store_args: tuple[str, ...]) -> None:
    key = create_key(server.data_dir, *store_args, "--name", "lister")
    with JobsClient(server.target, key) as c:
        ids = [c.submit(_write(tmp_path / f"{i}.wav", _noise(8000, 0.1), 8000), hold=True).job_id for i in range(5)]
        listed = [j.job_id for j in c.list(page_size=2)]
        assert listed == ids[::-1]
        for job_id in ids:
            c.cancel(job_id)
        assert list(c.list()) == []


@pytest.mark.slow
def test_sigkill_mid_job_then_restart_completes(tmp_path: Path, database_url: str) -> None:
    """SQLite: the restart requeues the job at once. PostgreSQL (maybe shared by other replicas): the
    killed server's lease expires and the restarted one claims the job again. Either way it completes
    exactly once."""
    flags = ("--database-url", database_url, "--workers", "1", "--lease-seconds", "3")
    key = create_key(tmp_path, "--database-url", database_url)
    src = _write(tmp_path / "long.wav", _noise(48000, 240.0, 2), 48000)  # 4 min stereo at 48 kHz
    srv = start_server(tmp_path, *flags)
    with JobsClient(srv.target, key) as c:
        job = c.submit(src)
        deadline = time.monotonic() + 60
        while (j := c.get(job.job_id)).status != jobs_pb2.JOB_STATUS_PROCESSING or j.progress < 0.05:
            assert j.status not in (jobs_pb2.JOB_STATUS_COMPLETED, jobs_pb2.JOB_STATUS_FAILED), j
            assert time.monotonic() < deadline, "job never started processing"
            time.sleep(0.05)
    srv.stop(sig=9)
    results = tmp_path / "blobs" / "results"
    assert not [p for p in results.glob("*") if not p.name.startswith(".")], "a partial result has a final name"
    srv2 = start_server(tmp_path, *flags)
    try:
        with JobsClient(srv2.target, key) as c:
            assert c.get(job.job_id).status != jobs_pb2.JOB_STATUS_COMPLETED
            with pytest.raises(HushwireClientError):
                c.download(job.job_id)
            done = c.wait(job.job_id, timeout=240)
            assert STATUS_NAMES[done.status] == "completed", done.error
            _, path = c.download(job.job_id, tmp_path / "out.wav")
            assert sf.info(str(path)).frames == 240 * 48000
        if database_url.startswith("sqlite://"):
            assert "jobs requeued count=1 reason='unfinished at the previous stop'" in srv2.log
        else:
            assert "jobs requeued" not in srv2.log and f"job_id={job.job_id!r}" in srv2.log
        store = Store(database_url)
        try:
            row = store.get_job(job.job_id)
            assert row is not None and row.attempts == 2 and row.lease_owner is None
            [(_, billed, _, completed)] = store.usage(1)
            assert completed == 1 and billed == pytest.approx(480.0)  # billed once
        finally:
            store.close()
    finally:
        assert srv2.stop() == 0


def test_one_users_queue_does_not_hold_back_another_users_job(tmp_path: Path, database_url: str) -> None:
    """Fair claims with a real server and one worker: A queues three long jobs, then B a short one.
    B's job runs as soon as A's running job ends, before the rest of A's queue."""
    flags = ("--database-url", database_url, "--workers", "1")
    a_key = create_key(tmp_path, "--database-url", database_url, "--name", "a")
    b_key = create_key(tmp_path, "--database-url", database_url, "--name", "b")
    long = _write(tmp_path / "long.wav", _noise(16000, 60.0), 16000)
    short = _write(tmp_path / "short.wav", _noise(16000, 0.5), 16000)
    srv = start_server(tmp_path, *flags)
    try:
        with JobsClient(srv.target, a_key) as a, JobsClient(srv.target, b_key) as b:
            a_ids = [a.submit(long).job_id for _ in range(3)]
            b_id = b.submit(short).job_id
            assert a.get(a_ids[0]).status != jobs_pb2.JOB_STATUS_COMPLETED, "A's first job ended too soon to test"
            assert STATUS_NAMES[b.wait(b_id, timeout=120).status] == "completed"
            for job_id in a_ids:
                a.cancel(job_id)
        claims = re.findall(r"job pre-processing job_id='([^']+)'", srv.log)
        assert claims[:2] == [a_ids[0], b_id], (claims, a_ids, b_id)
    finally:
        assert srv.stop() == 0, srv.log
