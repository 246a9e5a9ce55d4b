"""The event loop's store facade (server/store/aio.py) on a real SQLite file whose write lock another
connection holds: calls time out with StoreUnavailable, queued calls whose caller gave up never run,
calls in flight are bounded, and calls past that bound wait their turn (bounded too) instead of being
refused while the database answers."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from server.store import AsyncStore, Settled, Store, StoreUnavailable


def _lock_for(path: Path, seconds: float) -> threading.Timer:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(seconds, lambda: (db.execute("ROLLBACK"), db.close()))
    release.start()
    return release


def test_calls_time_out_pile_up_boundedly_and_abandoned_queued_calls_never_run(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite", b"pepper", timeout=0.6)
    undone: list[Settled[int]] = []

    async def main() -> None:
        aio = AsyncStore(store, timeout=0.2, threads=1, max_pending=3, max_waiting=1)
        release = _lock_for(store.path or Path(), 1.5)
        t0 = time.monotonic()
        # Three in flight, the fourth waits for a turn.
        calls = [asyncio.ensure_future(aio.run_or_undo(undone.append, store.create_user, f"u{i}")) for i in range(4)]
        await asyncio.sleep(0)
        assert (aio.pending, aio.waiting) == (3, 1)
        with pytest.raises(StoreUnavailable, match="not keeping up: 3 calls in flight and 1 waiting"):
            await aio.run(store.create_user, "u4")   # over both bounds: at once
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert "no turn" in str(results[3]), results[3]   # the waiting one got none in its time
        assert time.monotonic() - t0 < 0.5  # answered at the facade's timeout, not the lock's end
        assert (aio.pending, aio.waiting) == (3, 0)  # the first still runs (it waits 0.6 s for the lock)
        await aio.settled()
        assert aio.pending == 0
        release.join()
        assert await aio.run(store.create_user, "after") > 0  # the store works again
        aio._pool.shutdown()

    asyncio.run(main())
    # The first call failed in the database (0.6 s < the 1.5 s lock); the two queued behind it were
    # abandoned before they reached the thread and never ran, and the fourth never got a turn: no
    # user u0-u3 exists.
    assert undone == [Settled(False, None)] * 4
    assert store.user_name(1) == "after"
    store.close()


def test_a_burst_past_the_bound_waits_its_turn_and_every_call_is_answered(tmp_path: Path) -> None:
    """A database that answers, only slowly for a moment (another connection's write lock for 0.3 s,
    under the 2 s timeout): 40 calls at once against 2 places get their answers in arrival order; a
    waiting caller that is cancelled gives its turn up, and its call never runs."""
    store = Store(tmp_path / "db.sqlite", b"pepper", timeout=2.0)
    undone: list[Settled[int]] = []

    async def main() -> list[int]:
        aio = AsyncStore(store, timeout=2.0, threads=1, max_pending=2)
        release = _lock_for(store.path or Path(), 0.3)
        calls = [asyncio.ensure_future(aio.run_or_undo(undone.append, store.create_user, f"u{i}")) for i in range(40)]
        await asyncio.sleep(0)
        assert (aio.pending, aio.waiting) == (2, 38)
        calls[10].cancel()   # a caller that goes away while it waits
        await asyncio.sleep(0)
        assert aio.waiting == 37
        results = await asyncio.gather(*calls, return_exceptions=True)
        await aio.settled()
        assert (aio.pending, aio.waiting) == (0, 0)
        release.join()
        aio._pool.shutdown()
        assert isinstance(results.pop(10), asyncio.CancelledError)
        assert all(isinstance(r, int) for r in results), results
        return [r for r in results if isinstance(r, int)]

    uids = asyncio.run(main())
    assert uids == sorted(uids), uids   # first come, first served
    assert [store.user_name(uid) for uid in uids] == [f"u{i}" for i in range(40) if i != 10]
    assert undone == [Settled(False, None)]   # the cancelled one: it never ran
    store.close()
