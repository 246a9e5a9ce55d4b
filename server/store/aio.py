"""The store for the event loop: every call runs in a small, bounded pool of threads, and the loop
only awaits it.

A slow database (another connection holding SQLite's write lock, a ``LOCK TABLE`` on PostgreSQL, a
network that stopped answering) must not stall the live streams of the replica. So nothing on the
event loop calls :class:`~server.store.Store` directly: it awaits :class:`AsyncStore`, which runs the
call in one of :data:`STORE_THREADS` threads and gives up after ``timeout`` seconds
(``--store-timeout``) with :class:`~server.store.StoreUnavailable`, which the servicers answer with
``SERVICE_UNAVAILABLE``.

A thread cannot be stopped, so what happens to a call that timed out is decided here, not left to
chance:

- the store itself bounds every wait it makes by the same timeout (its lock, SQLite's busy
  timeout, PostgreSQL's ``statement_timeout``): the abandoned call ends soon after, and a call that
  failed rolled back its transaction;
- a call still queued when its caller gave up is never run;
- calls in flight (running, queued, or abandoned but still running) are at most
  :data:`MAX_PENDING`; a call past that waits on the event loop for a turn, first come first
  served, within the same timeout: a burst (200 live streams and 100 uploads opening at once each
  check their key) is served in turn by a database that answers, and only a database that does not
  answer within the timeout turns calls away. At most :data:`MAX_WAITING` calls wait; past that a
  new call fails at once instead of piling up;
- a write whose caller must know its fate (:meth:`AsyncStore.run_or_undo`) names an ``undo``
  callback: when the caller does not get the result, it runs once the thread is done, told whether
  the write took effect (a commit that won the race with the timeout), and undoes or completes it
  (e.g. withdraws a job row created for an upload whose client was told to retry).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

from server.store.core import JobRow, Principal, Store
from server.store.engines import StoreUnavailable

__all__ = ["MAX_PENDING", "MAX_WAITING", "STORE_THREADS", "AsyncStore", "Settled"]

log = logging.getLogger("hushwire.store")

# Threads that run store calls. The store serialises its calls on one connection, so more threads
# would not make it faster; a few let a stuck call and the calls behind it time out independently.
STORE_THREADS = 4
# Calls in flight at once (running, queued, or abandoned by their caller but still running); a call
# beyond this waits for a turn, so a stalled database cannot pile up work in the threads' queue.
MAX_PENDING = 64
# Calls waiting for a turn; a call beyond this fails at once with StoreUnavailable. Each is an RPC
# already received, waiting at most the store timeout: this bounds what a stalled database holds on
# the event loop, far above a burst of healthy calls (a few hundred: every stream of a replica that
# died reconnecting to this one).
MAX_WAITING = 1024

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Settled(Generic[T]):
    """How a store call ended whose caller did not get its result."""

    ran: bool           # it completed: its effects are in the database
    value: T | None     # its result, when it ran


class _Abandoned(Exception):
    """The caller gave up before the call reached a thread: it is not run."""


class AsyncStore:
    """Awaitable store calls, bounded in time and in number (see the module docstring).

    ``sync`` is the underlying :class:`Store` (for code that is not on the event loop). Use from
    the event loop's thread only."""

    def __init__(self, store: Store, timeout: float, threads: int = STORE_THREADS,
                 max_pending: int = MAX_PENDING, max_waiting: int = MAX_WAITING) -> None:
        self.sync = store
        self.timeout = timeout
        self.max_pending = max_pending
        self.max_waiting = max_waiting
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="hushwire-store")
        self._pending = 0   # calls in flight, and turns handed to waiting calls not yet submitted
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        """Calls in flight now (including abandoned ones still running)."""
        return self._pending

    @property
    def waiting(self) -> int:
        """Calls waiting for a turn now."""
        return len(self._waiting)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` (a method of :attr:`sync`) in a store thread, within the timeout."""
        return await self.run_or_undo(None, fn, *args, **kwargs)

    async def run_or_undo(self, undo: Callable[[Settled[T]], object] | None, fn: Callable[P, T],
                          *args: P.args, **kwargs: P.kwargs) -> T:
        """Like :meth:`run`, for a write whose caller must know its fate. If the caller does not get
        ``fn``'s result (``fn`` failed, timed out, or the caller was cancelled), ``undo(settled)`` runs
        once on the event loop after ``fn``'s thread is done with it: ``settled.ran`` says whether
        ``fn`` completed (its effects stand: undo or finish them), ``settled.value`` is its result."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout   # the wait for a turn counts: one bound for the caller
        try:
            await self._turn(deadline)
        except BaseException:   # no turn (StoreUnavailable) or the caller was cancelled: nothing ran
            if undo is not None:
                undo(Settled(False, None))
            raise
        abandoned = threading.Event()

        def call() -> T:
            if abandoned.is_set():
                raise _Abandoned
            return fn(*args, **kwargs)

        try:
            fut = loop.run_in_executor(self._pool, call)
        except BaseException:   # the pool is shut down: give the turn back
            self._release()
            raise
        fut.add_done_callback(self._finished)
        name = getattr(fn, "__name__", "call")
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(fut)
        except TimeoutError:
            if fut.done():  # finished at the deadline: its answer stands
                return fut.result()
            abandoned.set()
            fut.add_done_callback(lambda f: self._settle(f, undo, name))
            raise StoreUnavailable(f"the database did not answer within {self.timeout:g} s") from None
        except asyncio.CancelledError:  # the RPC ended (client gone, drain): the call may still run
            abandoned.set()
            fut.add_done_callback(lambda f: self._settle(f, undo, name))
            raise
        except BaseException:  # fn raised: nothing of it stands
            if undo is not None:
                undo(Settled(False, None))
            raise

    async def _turn(self, deadline: float) -> None:
        """Take one of the :attr:`max_pending` places, waiting for it in arrival order until ``deadline``;
        StoreUnavailable when none comes in time, or when :attr:`max_waiting` calls wait already."""
        if self._pending < self.max_pending and not self._waiting:
            self._pending += 1
            self._idle.clear()
            return
        if len(self._waiting) >= self.max_waiting:
            raise StoreUnavailable(f"the database is not keeping up: {self._pending} calls in flight and "
                                   f"{len(self._waiting)} waiting")
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        self._idle.clear()
        try:
            async with asyncio.timeout_at(deadline):
                await turn
        except BaseException as exc:
            if turn.done() and not turn.cancelled():   # handed a turn as the wait ended: pass it on
                self._release()
            else:
                turn.cancel()
                if turn in self._waiting:   # (_release drops a cancelled turn it comes to)
                    self._waiting.remove(turn)
                self._release(0)
            if isinstance(exc, TimeoutError):
                raise StoreUnavailable(f"the database did not answer within {self.timeout:g} s (no turn among "
                                       f"{self._pending} calls in flight)") from None
            raise

    def _release(self, places: int = 1) -> None:
        """Give ``places`` back and hand free places to the calls waiting, in arrival order."""
        self._pending -= places
        while self._waiting and self._pending < self.max_pending:
            turn = self._waiting.popleft()
            if not turn.done():   # a cancelled caller's turn is cancelled already: skip it
                self._pending += 1
                turn.set_result(None)
        if not self._pending and not self._waiting:
            self._idle.set()

    def _finished(self, fut: asyncio.Future[Any]) -> None:
        self._release()
        if not fut.cancelled():
            fut.exception()  # retrieved here: an abandoned call's error is logged by _settle

    @staticmethod
    def _settle(fut: asyncio.Future[T], undo: Callable[[Settled[T]], object] | None, name: str) -> None:
        """An abandoned call is done: log its failure, or hand its result to ``undo``."""
        exc = None if fut.cancelled() else fut.exception()
        ran = not fut.cancelled() and exc is None
        if exc is not None and not isinstance(exc, _Abandoned):  # it rolled back
            log.warning("store call %s, given up by its caller, failed: %s", name, exc)
        if undo is not None:
            try:
                undo(Settled(True, fut.result()) if ran else Settled(False, None))
            except Exception:
                log.exception("store call %s: undoing it failed", name)

    async def settled(self) -> None:
        """Wait until no call is in flight or waiting, abandoned ones included, and their ``undo``
        callbacks ran."""
        await self._idle.wait()

    def close(self) -> None:
        """Let running calls finish (each is bounded by the timeout), then close the store."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.sync.close()

    # -- the calls the server makes on its event loop --------------------------------------------

    async def authenticate(self, key: str) -> Principal | None:
        return await self.run(self.sync.authenticate, key)

    async def get_job(self, job_id: str) -> JobRow | None:
        return await self.run(self.sync.get_job, job_id)

    async def list_jobs(self, uid: int, limit: int, before: tuple[float, str] | None = None) -> list[JobRow]:
        return await self.run(self.sync.list_jobs, uid, limit, before)

    async def count_queued(self, uid: int) -> int:
        return await self.run(self.sync.count_queued, uid)

    async def usage_today(self, uid: int) -> tuple[int, float]:
        return await self.run(self.sync.usage_today, uid)

    async def start_job(self, job_id: str, attenuation_limit_db: float | None, set_options: bool) -> bool:
        return await self.run(self.sync.start_job, job_id, attenuation_limit_db, set_options)

    async def record_stream(self, key_id: int, uid: int, billed_seconds: float) -> None:
        await self.run(self.sync.record_stream, key_id, uid, billed_seconds)

    async def requeue(self, owner: str | None = None) -> int:
        return await self.run(self.sync.requeue, owner)
