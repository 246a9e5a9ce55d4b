"""A burst of requests to a slow database waits its turn; only a database that does not answer gets 503.

The soak (bench/soak.py: 200 live streams and 100 upload clients opening at once) had uploads and
streams refused with ``SERVICE_UNAVAILABLE`` "the server's database is unavailable" within
milliseconds of the start, while the database answered every call: the server's store facade
(server/store/aio.py) refused any call past 64 in flight at once. Now such a call waits for a turn
within ``--store-timeout``, and only a database that gives no answer in that time is answered 503,
with ``Retry-After``.

Real parts: a ``hushwire serve`` (one process) and a ``hushwire gateway`` on loopback ports, a real
SQLite file whose write lock another connection holds (as a job worker's transaction does), so that
the writes under way take every store thread while the burst arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import ServerProcess, create_key, sqlite_write_lock, start_server
from test_gateway import GatewayProcess, start_gateway

from hushwire.contract.errors import RETRY_AFTER_SECONDS
from server.store.aio import MAX_PENDING, STORE_THREADS

STORE_TIMEOUT_S = 3.0
BURST = MAX_PENDING + 100   # requests at once: far past the calls the store lets run at once
HOLD_S = 1.5                # the lock's hold in the burst: well under the store timeout


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, GatewayProcess, str]]:
    data = tmp_path_factory.mktemp("data")
    key = create_key(data, "--name", "burst")
    srv = start_server(data, "--processes", "1", "--workers", "0", "--store-timeout", str(STORE_TIMEOUT_S))
    gw = start_gateway(data, srv.target)
    try:
        yield srv, gw, key
    finally:
        assert gw.stop() == 0, gw.log
        assert srv.stop() == 0, srv.log


def test_a_burst_past_the_store_bound_waits_its_turn_and_gets_its_answers(
        stack: tuple[ServerProcess, GatewayProcess, str]) -> None:
    srv, gw, key = stack
    headers = {"Authorization": key}

    async def main() -> tuple[list[httpx.Response], list[httpx.Response], float]:
        limits = httpx.Limits(max_connections=BURST + 2 * STORE_THREADS)
        async with httpx.AsyncClient(base_url=gw.url, timeout=30, trust_env=False, limits=limits) as http:
            assert (await http.get("/me", headers=headers)).status_code == 200   # connections warm
            with sqlite_write_lock(srv.data_dir / "hushwire.db"):
                # Writes that wait for the lock: they hold every store thread, so the key checks of
                # the burst queue behind them.
                writes = [asyncio.ensure_future(http.post("/me/webhook-secret", headers=headers))
                          for _ in range(2 * STORE_THREADS)]
                await asyncio.sleep(0.5)
                t0 = time.monotonic()
                burst = [asyncio.ensure_future(http.get("/me", headers=headers)) for _ in range(BURST)]
                await asyncio.sleep(HOLD_S - 0.5)
            return await asyncio.gather(*writes), await asyncio.gather(*burst), time.monotonic() - t0

    writes, burst, took = asyncio.run(main())
    refused = [(r.status_code, r.text[:120]) for r in [*writes, *burst] if r.status_code != 200]
    assert not refused, f"{len(refused)} of {len(writes) + len(burst)} refused, e.g. {refused[:3]}"
    assert took < STORE_TIMEOUT_S + 2.0, took   # answered once the lock went, not at a deadline
    assert "not keeping up" not in srv.log, srv.log[-2000:]


def test_a_database_that_does_not_answer_is_503_with_retry_after(
        stack: tuple[ServerProcess, GatewayProcess, str]) -> None:
    srv, gw, key = stack
    with httpx.Client(base_url=gw.url, timeout=30, trust_env=False) as http, \
            sqlite_write_lock(srv.data_dir / "hushwire.db"):
        t0 = time.monotonic()
        r = http.post("/me/webhook-secret", headers={"Authorization": key})
        took = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "SERVICE_UNAVAILABLE", r.text
    assert "database" in r.json()["error"]["msg"], r.text
    assert r.headers.get("retry-after") == str(RETRY_AFTER_SECONDS), r.headers
    assert STORE_TIMEOUT_S - 0.5 < took < STORE_TIMEOUT_S + 3.0, took   # after the store timeout, not before
