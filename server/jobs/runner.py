"""The runner: claims runnable jobs and runs them in a pool of worker processes.

Work runs in worker processes (one per core by default), never on the server's event loop, and
the runner's own store calls (claim, requeue) go through :class:`~server.store.AsyncStore`, so a
slow database delays claims but never the loop. A job whose lease expired (its worker, or its
whole replica, died) is claimed again, by any replica that shares the database.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import multiprocessing
import os
import time
import uuid
from pathlib import Path
from typing import Any

from server.blobs import BlobStore
from server.config import cores
from server.jobs.worker import JobOutcome, Outcome, ready, run_job, worker_init
from server.logs import event
from server.metrics import METRICS
from server.store import AsyncStore, JobRow, Settled, StoreUnavailable

__all__ = ["MAX_ATTEMPTS", "JobRunner"]

log = logging.getLogger("hushwire.jobs")

MAX_ATTEMPTS = 3             # leases a job may use before it fails (a file that kills workers)
POLL_SECONDS = 0.5           # how often the runner looks for work nobody poked it about


class JobRunner:
    """Claims runnable jobs and runs them in a pool of worker processes."""

    def __init__(self, store: AsyncStore, database: str | Path, blobs: BlobStore, data_dir: Path,
                 workers: int | None, lease_seconds: float, requeue_on_start: bool = True, log_level: str = "info",
                 log_format: str = "text") -> None:
        """``database`` is what worker processes open: the store's URL (or its SQLite path)."""
        self._log_level, self._log_format = log_level, log_format
        self._store = store
        self._database = str(database)
        self._blob_url, self._data_dir = blobs.url, str(data_dir)  # workers reopen the same store
        # 0 workers: a replica that takes jobs in and serves them but leaves the work to its peers.
        self.workers = cores() if workers is None else workers
        self._lease = lease_seconds
        self._requeue_on_start = requeue_on_start
        self.owner = uuid.uuid4().hex[:16]
        self._wake = asyncio.Event()
        self._running: set[asyncio.Future[JobOutcome]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._task: asyncio.Task[None] | None = None
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._stopping = False
        self._restarting = False  # the worker pool broke: no claims until it is replaced
        self._store_down = False

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=worker_init,
            initargs=(self._log_level, self._log_format, os.getpid()))

    async def warm_up(self) -> None:
        """Start every worker process (imports included) before the server reports SERVING."""
        if self._pool is None:  # no workers
            return
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, ready) for _ in range(self.workers)))

    async def start(self) -> None:
        if self._requeue_on_start:  # the embedded store belongs to this server alone
            n = await self._store.requeue()
            if n:
                event(log, "jobs requeued", count=n, reason="unfinished at the previous stop")
        self._pool = self._new_pool() if self.workers else None
        self._task = asyncio.create_task(self._loop())

    def poke(self) -> None:
        self._wake.set()

    async def _claim(self) -> JobRow | None:
        """The next job, leased to this runner. A claim that commits after its call timed out is run
        all the same (:meth:`_late_claim`): its lease is this runner's."""
        store = self._store
        return await store.run_or_undo(self._late_claim, store.sync.claim_next, self.owner, self._lease,
                                       MAX_ATTEMPTS)

    def _late_claim(self, settled: Settled[JobRow | None]) -> None:
        if settled.ran and settled.value is not None and not (self._stopping or self._restarting):
            self._dispatch(settled.value)
        # else nothing was claimed, or stop() or the pool's restart requeues this owner's jobs

    async def _loop(self) -> None:
        while not self._stopping:
            while len(self._running) < self.workers and not self._stopping and not self._restarting:
                try:
                    job = await self._claim()
                except StoreUnavailable as exc:  # keep polling: the loop must outlive a database restart
                    if not self._store_down:
                        event(log, "cannot claim jobs", level=logging.ERROR, error=str(exc))
                    self._store_down = True
                    break
                if self._store_down:
                    event(log, "claiming jobs again")
                    self._store_down = False
                if job is None:
                    break
                if self._stopping:  # claimed while stop() began: stop() requeues it
                    break
                self._dispatch(job)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            except TimeoutError:
                pass

    def _dispatch(self, job: JobRow) -> None:
        assert self._pool is not None
        event(log, "job pre-processing", job_id=job.job_id, uid=job.uid, file_name=job.file_name,
              attempt=job.attempts)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, run_job, self._database, self._blob_url, self._data_dir,
                                   job.job_id, self.owner, self._lease, job.attempts)
        self._running.add(fut)
        fut.add_done_callback(functools.partial(self._done, job=job, started=started))

    def _done(self, fut: asyncio.Future[JobOutcome], *, job: JobRow, started: float) -> None:
        self._running.discard(fut)
        try:
            result = fut.result()
            seconds = time.monotonic() - started
            fields: dict[str, Any] = {"job_id": job.job_id, "uid": job.uid, "file_name": job.file_name,
                                      "seconds": round(seconds, 3)}
            if result.outcome is Outcome.COMPLETED:
                METRICS.jobs_completed.inc()
                METRICS.job_seconds.observe(seconds)
                METRICS.billed(job.uid, job.key_id, job.billed_seconds, "job")
                fields["billed_seconds"] = round(job.billed_seconds, 3)
            elif result.outcome is Outcome.FAILED:
                METRICS.jobs_failed.inc()
                METRICS.job_seconds.observe(seconds)
                code = result.error_code or "INTERNAL"
                METRICS.errors.labels(code).inc()
                fields.update(error_code=code, error_msg=result.error_msg or "")
            event(log, f"job {result.outcome}", **fields)
        except concurrent.futures.process.BrokenProcessPool:
            if not self._stopping and not self._restarting:  # every job of the broken pool ends here
                event(log, "worker died; restarting the pool", level=logging.ERROR, job_id=job.job_id)
                self._restarting = True
                self._spawn(self._restart_pool())
        except Exception:
            log.exception("job %s: runner error", job.job_id)
        self.poke()

    async def _restart_pool(self) -> None:
        """After a worker died: put this runner's jobs back in the queue, then claim again."""
        with contextlib.suppress(StoreUnavailable):  # else the leases expire
            await self._store.requeue(self.owner)
        self._pool = self._new_pool()
        self._restarting = False
        self.poke()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stop claiming, end the workers, and put their jobs back in the queue."""
        self._stopping = True
        self.poke()
        if self._task is not None:
            await self._task
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pool is not None:
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.terminate()
            self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            n = await self._store.requeue(self.owner)
        except StoreUnavailable as exc:  # the leases expire instead, and another replica takes the jobs
            event(log, "cannot requeue jobs", level=logging.ERROR, error=str(exc))
            return
        if n:
            event(log, "jobs requeued", count=n, reason="server stopping")
