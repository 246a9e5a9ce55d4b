"""The submit use-case (server/jobs/submit.py) without a server process: a real SQLite store and a
real blob folder in tmp_path, driven with asyncio. Includes what happens when the database answers
after the store timeout: nothing is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from server.blobs import LocalBlobs
from server.errors import HushwireError
from server.jobs import JobLimits, Submission, Submitter, UploadSpec
from server.store import PENDING, AsyncStore, Principal, Store, StoreUnavailable

PEPPER = b"test-pepper"
LIMITS = JobLimits(max_upload_bytes=1_000_000, max_upload_seconds=60.0, max_queued_jobs_per_user=3,
                   max_bytes_per_day_per_user=10_000_000)


def _wav(seconds: float = 0.5, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    x = (np.random.default_rng(0).standard_normal(int(seconds * rate)) * 0.03).astype(np.float32)
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


async def _chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class Desk:
    """A Submitter on a real SQLite store and blob folder; the store's own timeout can differ from
    the facade's (to let a call finish after its caller gave up)."""

    def __init__(self, tmp: Path, timeout: float = 5.0, store_timeout: float | None = None,
                 limits: JobLimits = LIMITS) -> None:
        self.db_path = tmp / "hushwire.db"
        self.store = Store(self.db_path, PEPPER, timeout=timeout if store_timeout is None else store_timeout)
        uid = self.store.create_user("ann")
        key_id, _ = self.store.create_key(uid)
        self.principal = Principal(uid=uid, key_id=key_id, name="ann")
        self.blobs = LocalBlobs(tmp / "blobs")
        self.timeout = timeout
        self.limits = limits

    def run(self, coro_fn: object) -> object:
        async def main() -> object:
            aio = AsyncStore(self.store, self.timeout)
            submitter = Submitter(aio, self.blobs, self.limits)
            try:
                return await coro_fn(submitter)  # type: ignore[operator]
            finally:
                await submitter.cleanups()
        return asyncio.run(main())

    def uploads(self) -> list[str]:
        folder = self.blobs.root / "uploads"
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

    def usage_bytes(self) -> int:
        return self.store.usage_today(self.principal.uid)[0]


@contextlib.contextmanager
def _write_locked(path: Path, seconds: float) -> Iterator[None]:
    """Another connection holds the SQLite write lock for ``seconds`` (from a thread), then lets go."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(seconds, lambda: (db.execute("ROLLBACK"), db.close()))
    release.start()
    try:
        yield
    finally:
        release.join()


def test_a_submission_stores_the_upload_and_creates_a_pending_job(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    data = _wav()
    spec = UploadSpec(file_name="../../etc/a\x07b.wav", file_key="file", size_hint_bytes=len(data),
                      attenuation_limit_db=12.0)
    submitted = desk.run(lambda s: s.submit(desk.principal, spec, _chunks(data)))
    assert isinstance(submitted, Submission) and submitted.job is not None
    row = desk.store.get_job(submitted.job.job_id)
    assert row is not None and row == submitted.job
    assert row.status == PENDING and not row.held and row.attenuation_limit_db == 12.0
    assert row.file_name == "ab.wav"  # no path, no control characters
    assert (row.sample_rate, row.channels, row.frames, row.format) == (16000, 1, 8000, "WAV")
    assert desk.blobs.local_path(row.upload_blob).read_bytes() == data
    assert desk.uploads() == [row.job_id]
    assert desk.usage_bytes() == len(data)


@pytest.mark.parametrize(("spec", "data", "code"), [
    (UploadSpec(size_hint_bytes=2_000_000), b"", "FILE_TOO_LARGE"),
    (UploadSpec(attenuation_limit_db=float("nan")), b"", "INVALID_REQUEST"),
    (UploadSpec(), b"not audio at all" * 100, "INVALID_FILE"),
    (UploadSpec(), b"", "INVALID_FILE"),
    (UploadSpec(), b"\0" * 1_000_001, "FILE_TOO_LARGE"),
])
def test_refusals_store_nothing(tmp_path: Path, spec: UploadSpec, data: bytes, code: str) -> None:
    desk = Desk(tmp_path)
    with pytest.raises(HushwireError) as info:
        desk.run(lambda s: s.submit(desk.principal, spec, _chunks(data, 65536)))
    assert info.value.code == code, info.value
    assert desk.store.list_jobs(desk.principal.uid, 10) == []
    assert desk.uploads() == [] and desk.usage_bytes() == 0
    assert not list(desk.blobs.root.rglob("*.tmp"))  # no spool file left either


def test_the_queued_jobs_and_daily_bytes_limits(tmp_path: Path) -> None:
    data = _wav(0.1)
    desk = Desk(tmp_path, limits=JobLimits(1_000_000, 60.0, 2, 3 * len(data) - 1))
    submit = lambda s: s.submit(desk.principal, UploadSpec(), _chunks(data))  # noqa: E731
    desk.run(submit)
    desk.run(submit)
    with pytest.raises(HushwireError, match="unfinished jobs") as info:
        desk.run(submit)
    assert info.value.code == "RATE_LIMITED"
    desk.store.delete_job(desk.store.list_jobs(desk.principal.uid, 1)[0].job_id)
    with pytest.raises(HushwireError, match="daily upload quota") as info:
        desk.run(submit)  # the third upload crosses the byte quota mid-stream
    assert info.value.code == "RATE_LIMITED" and desk.usage_bytes() == 2 * len(data)


@pytest.mark.parametrize("limits", [
    pytest.param(lambda n: JobLimits(1_000_000, 60.0, 2, 10_000_000), id="unfinished-jobs"),
    pytest.param(lambda n: JobLimits(1_000_000, 60.0, 100, 2 * n + n // 2), id="daily-bytes"),
    pytest.param(lambda n: JobLimits(1_000_000, 60.0, 100, 10_000_000, 0.25), id="daily-audio-seconds"),
])
def test_concurrent_uploads_of_one_user_stay_within_the_limits(tmp_path: Path, limits: Any) -> None:
    """Six uploads of one user in flight at once each pass the checks made when they start; together
    they must still not create more jobs, bytes or seconds than the limits allow (two 0.1 s files)."""
    data = _wav(0.1)
    desk = Desk(tmp_path, limits=limits(len(data)))
    uploads = 6

    async def main(submitter: Submitter) -> list[object]:
        started = 0
        all_started = asyncio.Event()

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal started
            yield data[:100]
            started += 1
            if started == uploads:
                all_started.set()
            await all_started.wait()   # every upload has passed its first checks
            yield data[100:]

        return await asyncio.gather(*(submitter.submit(desk.principal, UploadSpec(), chunks())
                                      for _ in range(uploads)), return_exceptions=True)

    results = desk.run(main)
    assert isinstance(results, list)
    accepted = [r for r in results if isinstance(r, Submission)]
    refused = [r for r in results if isinstance(r, HushwireError)]
    assert len(accepted) == 2 and len(refused) == uploads - 2, results
    assert all(r.code == "RATE_LIMITED" for r in refused)
    assert desk.usage_bytes() == 2 * len(data)
    assert len(desk.uploads()) == 2   # the refused uploads' blobs are gone


def test_an_upload_cancelled_while_its_job_waits_its_turn_leaves_no_blob(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    data = _wav(0.1)

    async def main(submitter: Submitter) -> None:
        turn = submitter._user_locks[desk.principal.uid % len(submitter._user_locks)]
        async with turn:   # another upload of this user is creating its job
            task = asyncio.ensure_future(submitter.submit(desk.principal, UploadSpec(), _chunks(data)))
            while not turn._waiters:   # the upload is stored and waits for its turn
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    desk.run(main)
    assert desk.uploads() == [] and desk.store.list_jobs(desk.principal.uid, 10) == []


def test_a_stalled_database_is_store_unavailable_and_leaves_nothing(tmp_path: Path) -> None:
    """The write lock outlasts the store timeout: the database gives up too, and rolls back."""
    desk = Desk(tmp_path, timeout=0.3)
    with _write_locked(desk.db_path, 1.0), pytest.raises(StoreUnavailable):
        desk.run(lambda s: s.submit(desk.principal, UploadSpec(), _chunks(_wav())))
    assert desk.store.list_jobs(desk.principal.uid, 10) == []
    assert desk.uploads() == [] and desk.usage_bytes() == 0


def test_a_job_created_after_its_client_gave_up_is_withdrawn(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                               ) -> None:
    """The facade gives up after 0.3 s but the store waits out the lock (1 s) and commits: the late
    job row is withdrawn and its blob deleted, so the client that was told to retry finds nothing."""
    desk = Desk(tmp_path, timeout=0.3, store_timeout=10.0)

    async def submit_then_wait(s: Submitter) -> None:
        with pytest.raises(StoreUnavailable, match="did not answer within 0.3 s"):
            await s.submit(desk.principal, UploadSpec(), _chunks(_wav()))
        for _ in range(100):  # the store call commits when the lock goes; then the undo runs
            await asyncio.sleep(0.05)
            if not desk.uploads():
                break

    with caplog.at_level(logging.INFO, "hushwire.jobs"), _write_locked(desk.db_path, 1.0):
        desk.run(submit_then_wait)
    assert "job withdrawn" in caplog.text  # it was created, late, then undone
    assert desk.store.list_jobs(desk.principal.uid, 10) == []
    assert desk.uploads() == [] and desk.usage_bytes() == 0


def test_a_withdrawal_that_settles_late_still_deletes_the_blob(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """As above, and the withdrawal itself outlasts the facade's timeout (the database is slow again)
    but completes: its blob goes too, and the drain (cleanups) waits for that deletion."""
    desk = Desk(tmp_path, timeout=0.3, store_timeout=10.0)
    withdraw = desk.store.withdraw_job

    def slow_withdraw(job: object) -> bool:
        time.sleep(0.6)
        return withdraw(job)  # type: ignore[arg-type]

    desk.store.withdraw_job = slow_withdraw  # type: ignore[method-assign]

    async def submit(s: Submitter) -> None:
        with pytest.raises(StoreUnavailable, match="did not answer within 0.3 s"):
            await s.submit(desk.principal, UploadSpec(), _chunks(_wav()))

    with caplog.at_level(logging.INFO, "hushwire.jobs"), _write_locked(desk.db_path, 1.0):
        desk.run(submit)   # returns after Submitter.cleanups(): every late call and deletion is done
    assert desk.store.list_jobs(desk.principal.uid, 10) == []
    assert desk.uploads() == [] and desk.usage_bytes() == 0
    assert "could not be withdrawn in time" in caplog.text and "job withdrawn" in caplog.text


def test_an_idempotent_retry_gets_the_first_job_and_creates_nothing(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    data = _wav()
    spec = UploadSpec(file_name="a.wav", idempotency_key="req-1")

    def reply(job: object) -> bytes:
        return f"reply for {job.job_id}".encode()  # type: ignore[attr-defined]

    first = desk.run(lambda s: s.submit(desk.principal, spec, _chunks(data), reply=reply))
    again = desk.run(lambda s: s.submit(desk.principal, spec, _chunks(data), reply=reply))
    assert isinstance(first, Submission) and isinstance(again, Submission) and first.job is not None
    assert again.job == first.job  # the same job, and no second one
    assert [j.job_id for j in desk.store.list_jobs(desk.principal.uid, 10)] == [first.job.job_id]
    assert desk.uploads() == [first.job.job_id] and desk.usage_bytes() == len(data)
    with pytest.raises(HushwireError) as info:  # the key with another upload
        desk.run(lambda s: s.submit(desk.principal, spec, _chunks(data[:-2]), reply=reply))
    assert info.value.code == "IDEMPOTENCY_CONFLICT"
    desk.store.delete_job(first.job.job_id)  # gone since: the retry gets the reply stored for it
    gone = desk.run(lambda s: s.submit(desk.principal, spec, _chunks(data), reply=reply))
    assert gone == Submission(None, f"reply for {first.job.job_id}".encode())
