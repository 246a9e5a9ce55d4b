"""The sweeper: a server task that removes what clients left behind and nobody will claim.

Held jobs (``JobSpec.hold``) whose hold ran out: a client (the gateway, mid-request) that submitted
files with ``hold`` and then died or went silent for ``--hold-seconds`` never calls ``StartJob`` or
``CancelJob``. The sweeper deletes such jobs with their uploads and logs ``held job swept`` for each,
so they stop counting against the user's limits and take no space. Every replica sweeps; the store
hands each expired row to one of them.

Idempotency keys whose time ran out: stored replies after 24 h, reservations of requests that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from server.blobs import BlobStore, BlobStoreError
from server.logs import event
from server.store import AsyncStore, JobRow, Settled, StoreUnavailable

__all__ = ["Sweeper"]

log = logging.getLogger("hushwire.sweeper")

MAX_INTERVAL_S = 5.0   # a sweep at least this often (more often for short holds)


class Sweeper:
    def __init__(self, store: AsyncStore, blobs: BlobStore, hold_seconds: float) -> None:
        self._store = store
        self._blobs = blobs
        self.hold_seconds = hold_seconds
        self.interval = min(MAX_INTERVAL_S, max(0.05, hold_seconds / 4))
        self._task: asyncio.Task[None] | None = None
        self._late: set[asyncio.Task[None]] = set()

    async def sweep_once(self) -> int:
        """One pass; returns how many held jobs it removed."""
        now = time.time()
        rows = await self._store.run_or_undo(lambda settled: self._late_sweep(settled, now),
                                             self._store.sync.sweep_held, now)
        await self._remove(rows, now)
        return len(rows)

    def _late_sweep(self, settled: Settled[list[JobRow]], now: float) -> None:
        """A sweep that committed after its call timed out: its rows are gone, so remove their blobs."""
        if settled.ran and settled.value:
            task = asyncio.ensure_future(self._remove(settled.value, now))
            self._late.add(task)
            task.add_done_callback(self._late.discard)

    async def _remove(self, rows: list[JobRow], now: float) -> None:
        for job in rows:
            try:
                await asyncio.to_thread(self._blobs.delete, job.upload_blob)
            except (BlobStoreError, OSError) as exc:
                log.error("could not delete blob %s: %s", job.upload_blob, exc)
            idle = now - (job.hold_expires or now) + self.hold_seconds
            event(log, "held job swept", job_id=job.job_id, uid=job.uid, key_id=job.key_id,
                  file_name=job.file_name, idle_s=round(idle, 1))

    async def _loop(self) -> None:
        down = False
        while True:
            try:
                while await self.sweep_once():  # a full batch: there may be more
                    pass
                forgotten = await self._store.run(self._store.sync.sweep_keys, time.time())
                if forgotten:
                    event(log, "idempotency keys swept", count=forgotten)
                down = False
            except StoreUnavailable as exc:
                if not down:
                    event(log, "cannot sweep held jobs", level=logging.ERROR, error=str(exc))
                down = True
            except Exception:
                log.exception("sweeper error")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
