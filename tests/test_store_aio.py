"""The event loop's store facade (server/store/aio.py) on a real SQLite file whose write lock another
connection holds: calls time out with StoreUnavailable, queued calls whose caller gave up never run,
and calls in flight are bounded."""

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
        aio = AsyncStore(store, timeout=0.2, threads=1, max_pending=3)
        release = _lock_for(store.path or Path(), 1.5)
        t0 = time.monotonic()
        calls = [asyncio.ensure_future(aio.run_or_undo(undone.append, store.create_user, f"u{i}")) for i in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(StoreUnavailable, match="not keeping up: 3 calls"):  # over the bound: at once
            await aio.run(store.create_user, "u3")
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert time.monotonic() - t0 < 0.5  # answered at the facade's timeout, not the lock's end
        assert aio.pending == 3  # the first still runs (it waits 0.6 s for the lock); two are queued
        await aio.settled()
        assert aio.pending == 0
        release.join()
        assert await aio.run(store.create_user, "after") > 0  # the store works again
        aio._pool.shutdown()

    asyncio.run(main())
    # The first call failed in the database (0.6 s < the 1.5 s lock); the two queued behind it were
    # abandoned before they reached the thread and never ran: no user u0-u2 exists.
    assert undone == [Settled(False, None)] * 3
    assert store.user_name(1) == "after"
    store.close()
