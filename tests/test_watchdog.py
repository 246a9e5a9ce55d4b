"""server/watchdog.py: one timer per stream ends a wait that outlasts its clock, at the limit, and only then."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.watchdog import Watchdog


async def _wait_out(watch: Watchdog, limit_s: float, what: str, wait_s: float = 5.0) -> float:
    """Wait ``wait_s`` under ``watch``'s clock ``what`` of ``limit_s``: the seconds it waited, whether
    the watchdog ended it (its ``expired`` says) or not."""
    task = asyncio.current_task()
    assert task is not None
    t0 = time.monotonic()
    try:
        watch.begin(limit_s, what)
        try:
            await asyncio.sleep(wait_s)
        finally:
            watch.end()
    except asyncio.CancelledError:
        assert watch.expired is not None
        assert task.uncancel() == 0   # the watchdog's cancel was the only one: the task is clean again
    return time.monotonic() - t0


async def _wait_until_ended(limit_s: float, wait_s: float, shortest_s: float) -> tuple[float, tuple[str, float] | None]:
    """One task that waits ``wait_s`` under a watchdog clock of ``limit_s``: (seconds it waited, expired)."""
    task = asyncio.current_task()
    assert task is not None
    watch = Watchdog(task, shortest_s)
    try:
        waited = await _wait_out(watch, limit_s, "response", wait_s)
    finally:
        watch.close()
    return waited, watch.expired


def test_a_wait_that_outlasts_its_clock_is_ended_at_the_limit() -> None:
    waited, expired = asyncio.run(_wait_until_ended(0.3, 5.0, 0.3))
    assert expired == ("response", 0.3)
    assert 0.29 < waited < 0.6, waited


def test_a_wait_within_its_clock_is_left_alone() -> None:
    waited, expired = asyncio.run(_wait_until_ended(0.5, 0.2, 0.5))
    assert expired is None
    assert waited < 0.45


class _Counted(Watchdog):
    """A watchdog that counts its timer's firings."""

    fired = 0

    def _check(self) -> None:
        type(self).fired += 1
        super()._check()


def test_many_short_waits_do_not_add_up_and_the_timer_fires_rarely() -> None:
    """A healthy stream: 100 waits of 10 ms each under a 0.2 s clock take 1 s in all, far past the
    limit, and none is ended; the one timer re-arms itself about once per limit, not once per wait."""

    async def run() -> tuple[str, float] | None:
        task = asyncio.current_task()
        assert task is not None
        watch = _Counted(task, 0.2)
        for _ in range(100):
            watch.begin(0.2, "request")
            await asyncio.sleep(0.01)
            watch.end()
        watch.close()
        return watch.expired

    assert asyncio.run(run()) is None
    assert 2 <= _Counted.fired <= 12, _Counted.fired   # ~1 s / 0.2 s, not 100


def test_the_timer_catches_a_wait_that_begins_between_checks() -> None:
    """Idle between waits, the timer runs ``shortest_s`` ahead; a longer wait that begins between two
    idle checks is still ended at its own limit."""

    async def run() -> tuple[float, tuple[str, float] | None]:
        task = asyncio.current_task()
        assert task is not None
        watch = Watchdog(task, 0.1)
        await asyncio.sleep(0.25)   # idle: the timer checked at 0.1 and 0.2 s and is armed for 0.3 s
        waited = await _wait_out(watch, 0.4, "request")
        watch.close()
        return waited, watch.expired

    waited, expired = asyncio.run(run())
    assert expired == ("request", 0.4)
    assert waited == pytest.approx(0.4, abs=0.1)


def test_a_short_clock_after_a_long_one_is_kept() -> None:
    """The stream's clocks differ (a request may take 30 s to come, a response only 10 s to be taken): a
    short wait that follows a long one in progress at a check is still ended at its own limit (the
    timer armed for the long wait's deadline would have let it run that long)."""

    async def run() -> tuple[float, tuple[str, float] | None]:
        task = asyncio.current_task()
        assert task is not None
        watch = Watchdog(task, 0.2)
        watch.begin(3.0, "request")      # in progress when the timer fires at 0.2 s
        await asyncio.sleep(0.3)
        watch.end()
        waited = await _wait_out(watch, 0.2, "response")   # never taken
        watch.close()
        return waited, watch.expired

    waited, expired = asyncio.run(run())
    assert expired == ("response", 0.2)
    assert waited == pytest.approx(0.2, abs=0.15), waited
