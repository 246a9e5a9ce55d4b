"""Admission control for live streams: admit a new stream only while every admitted one stays real time.

A live stream is only useful in real time, so a server that takes more streams than it can carry
breaks all of them at once. :class:`Admission` decides at the moment a stream opens, from what it
measures, not from a count the operator has to guess (``--max-streams`` stays an optional cap):

- **cost**: an EWMA of the server process's CPU seconds (all its threads: the event loop, grpc's
  own threads, the batched denoiser) per *weighted* second of live audio. A stream's weight is
  its channels times ``max(1, rate / 16 kHz)``: a 48 kHz stereo stream costs about six 16 kHz mono
  ones. Until enough audio has flowed to measure, a prior (``PRIOR_COST``) stands in.
- **reservation**: each admitted stream reserves ``weight x cost`` of the budget the moment it
  is admitted, before its load shows. A burst of 100+ streams opening within a second (a replica
  died; all its clients reconnect) is therefore split into the streams that fit and the rest,
  refused at once, instead of all getting in and all falling behind together.
- **measured load**: the process's CPU share over the last window counts when it is higher than
  the reservations (uploads, downloads and health checks also run in this process), and the event
  loop's lag: a loop that wakes up ``LAG_LIMIT_S`` late on average is not keeping anyone in real
  time, whatever the CPU figures say.
- **CPU it can get**: on a machine shared with other work, the process cannot use the core the
  budget names. Linux counts, per thread, the time spent running and the time spent runnable but
  waiting for a CPU (``/proc/self/task/*/schedstat``); ``run / (run + wait)`` (an EWMA,
  ``hushwire_live_cpu_available``) scales the budget. Measured while idle too (the probes below
  wake the process 20 times a second), so a burst is judged against it before its load shows:
  on the shared 2-core machine of docs/performance.md a server was getting about a quarter of a
  core, and a budget of 0.9 core admitted 36-63 streams that all fell seconds behind.

- **slow start**: within one half-second window, new admissions may add at most as much weight as
  was already admitted (at least ``SLOW_START_WEIGHT``), so a burst onto an idle server ramps up
  over windows in which the lag and CPU measurements can catch a budget the machine does not give;
  the streams turned away meanwhile hear ``OVERLOADED`` and retry (through a balancer, elsewhere).

A new stream is admitted while ``max(reserved, measured CPU share) + its reservation`` stays within
``--live-cpu-budget`` (a fraction of one core) times the CPU available, and the loop keeps up. A
server with no live stream always admits one. Admitted streams are never ended for load. When a
stream would not fit, the server is *full*: the health service ``hushwire.v1.Enhancer`` goes NOT_SERVING (``""`` and
``hushwire.v1.Jobs`` stay SERVING, so jobs, polling and downloads continue), and it comes back only
after ``HOLD_S`` without being full (hysteresis, so a balancer's checks don't flap).

Use from the event loop's thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from server.metrics import METRICS

__all__ = ["HOLD_S", "LAG_LIMIT_S", "MAX_YIELD_S", "PRIOR_COST", "SLOW_START_WEIGHT", "Admission", "stream_weight"]

log = logging.getLogger("hushwire.server")

# CPU seconds per weighted audio second before anything is measured: 16 kHz mono streams measured
# 14.6 ms of server CPU per stream-second with the 1 ms batch window and 23 ms without (bench.streams);
# the prior errs towards the dearer figure.
PRIOR_COST = 0.025
# A measured cost never goes below this (a window with little audio and idle threads must not make
# streams look free).
MIN_COST = 0.002
# The event loop's mean lag over a window above which new streams are refused: 5 chunks of 20 ms.
LAG_LIMIT_S = 0.1
# New weight admitted per window beyond what was admitted before it (see "slow start").
SLOW_START_WEIGHT = 8.0
# Upload ingest yields to squeezed live streams in steps of this, at most MAX_YIELD_S per call (a chunk).
_YIELD_STEP_S = 0.05
MAX_YIELD_S = 0.5
_YIELD_STEPS = round(MAX_YIELD_S / _YIELD_STEP_S)
# Full -> not full needs this long without a refusal-worthy state (health hysteresis).
HOLD_S = 2.0
_WINDOW_S = 0.5       # how often CPU and audio are sampled
_LAG_TICK_S = 0.05    # the lag probe's sleep
_EWMA = 0.3           # weight of a new window's cost
_MIN_AUDIO_S = 1.0    # weighted audio seconds a window needs before it updates the cost
_MIN_AVAILABLE = 0.05  # the CPU share a process is assumed to get at worst


def stream_weight(sample_rate_hz: int, channels: int) -> float:
    """A stream's cost relative to 16 kHz mono (the unit the cost is measured in)."""
    return channels * max(1.0, sample_rate_hz / 16000.0)


class Admission:
    """Measured live capacity of this server process (see the module's docstring).

    ``budget`` is the CPU (fraction of one core) live streams may use; ``None`` turns measured
    admission off (only ``--max-streams`` and the per-user limit apply).
    """

    def __init__(self, budget: float | None, on_full_change: Callable[[bool], Coroutine[Any, Any, None]] | None = None,
                 hold_s: float = HOLD_S, prior_cost: float = PRIOR_COST) -> None:
        self.budget = budget
        self.cost = prior_cost
        self.reserved_weight = 0.0      # weights of the admitted streams
        self.cpu_share = 0.0            # the process's CPU share over the last window
        self.lag_s = 0.0                # the loop's mean lag over the last window
        self.available = 1.0            # share of the CPU it asks for that the process gets (EWMA)
        self.full = False
        self._hold_s = hold_s
        self._last_full = -1e9          # monotonic time the server was last found full
        self._on_full_change = on_full_change
        self._audio_s = 0.0             # weighted audio seconds processed since the last sample
        self._window_weight = 0.0       # weight admitted since the last sample (slow start)
        self._window_base = 0.0         # weight admitted before it
        self._lags: list[float] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[None]] = set()   # health updates under way

    # -- the decision ---------------------------------------------------------------------------------

    def headroom(self) -> float:
        """CPU share (of one core) left for new streams; negative when over budget."""
        if self.budget is None:
            return float("inf")
        load = max(self.reserved_weight * self.cost, self.cpu_share)
        return self.budget * self.available - load

    def fits(self, weight: float) -> bool:
        """Whether a new stream of ``weight`` may be admitted now (nothing is reserved)."""
        if self.budget is None or self.reserved_weight <= 0:
            return True   # an empty server always takes one stream, or it serves nothing at all
        if self.lag_s > LAG_LIMIT_S:
            return False
        return weight * self.cost <= self.headroom()

    def try_reserve(self, weight: float) -> bool:
        """Admit and reserve ``weight``, or mark the server full and return False."""
        if not self.fits(weight):
            self._mark_full()
            return False
        if self.budget is not None and self.reserved_weight > 0 \
                and self._window_weight + weight > max(SLOW_START_WEIGHT, self._window_base):
            return False   # slow start: not full (health stays SERVING), just not so many at once
        self.reserved_weight += weight
        self._window_weight += weight
        return True

    def squeezed(self) -> bool:
        """Whether the live streams admitted here need the CPU that other work in this process is taking:
        streams are admitted and the process is over its live budget (its measured CPU share, uploads'
        ingest included, above what the streams may use) or its loop lags."""
        if self.budget is None or self.reserved_weight <= 0:
            return False
        return self.lag_s > LAG_LIMIT_S / 2 or self.headroom() < 0

    async def yield_to_live(self) -> float:
        """Let admitted live streams go first: while :meth:`squeezed`, wait in steps of ``_YIELD_STEP_S``,
        at most ``MAX_YIELD_S`` in all; returns the seconds waited. Upload ingest in the server process
        (reading, hashing, spooling and checking each file) calls it per chunk, so a flood of uploads
        that arrives after streams were admitted slows down instead of making those streams late (the
        soak of docs/performance.md: 452 uploads in 30 s held 17 admitted streams at a fraction of real
        time). Admitted streams are never ended for load, so the uploads are what gives; the bound keeps
        an upload moving (slower) however long the squeeze lasts."""
        steps = 0
        while steps < _YIELD_STEPS and self.squeezed():
            await asyncio.sleep(_YIELD_STEP_S)
            steps += 1
        waited = steps * _YIELD_STEP_S
        if waited:
            METRICS.ingest_yield.inc(waited)
        return waited

    def release(self, weight: float) -> None:
        self.reserved_weight = max(0.0, self.reserved_weight - weight)

    def audio(self, weighted_seconds: float) -> None:
        """Count audio the live streams had processed (the cost's denominator)."""
        self._audio_s += weighted_seconds

    # -- full / not full ------------------------------------------------------------------------------

    def _mark_full(self) -> None:
        self._last_full = time.monotonic()
        if not self.full:
            self._set_full(True)

    def _set_full(self, full: bool) -> None:
        self.full = full
        event = "full: new live streams are refused (OVERLOADED)" if full else "live streams admitted again"
        log.info("admission: %s (reserved %.2f of %.2f core, cost %.1f ms per stream-second, lag %.0f ms)",
                 event, self.reserved_weight * self.cost, self.budget or 0.0, 1000 * self.cost, 1000 * self.lag_s)
        METRICS.live_full.set(1 if full else 0)
        if self._on_full_change is not None:
            task = asyncio.get_running_loop().create_task(self._on_full_change(full))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _recheck(self, now: float) -> None:
        """Full while a stream of weight 1 would not fit, and for ``hold_s`` after it last did not."""
        if self.budget is None:
            return
        if not self.fits(1.0):
            self._last_full = now
            if not self.full:
                self._set_full(True)
        elif self.full and now - self._last_full >= self._hold_s:
            self._set_full(False)

    # -- measuring ------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.budget is None:
            return
        self._tasks = [asyncio.create_task(self._sample()), asyncio.create_task(self._probe_lag())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _probe_lag(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(_LAG_TICK_S)
            self._lags.append(max(0.0, time.monotonic() - t0 - _LAG_TICK_S))

    async def _sample(self) -> None:
        wall0, cpu0, sched0 = time.monotonic(), time.process_time(), _schedstat()
        while True:
            await asyncio.sleep(_WINDOW_S)
            wall1, cpu1, sched1 = time.monotonic(), time.process_time(), _schedstat()
            run, wait = sched1[0] - sched0[0], sched1[1] - sched0[1]
            self.sample(wall1 - wall0, cpu1 - cpu0, run / (run + wait) if run > 0 and wait >= 0 else None)
            self._recheck(wall1)
            wall0, cpu0, sched0 = wall1, cpu1, sched1

    def sample(self, wall_s: float, cpu_s: float, available: float | None = None) -> None:
        """Fold one window's measurements in (called every ``_WINDOW_S``)."""
        if wall_s <= 0:
            return
        if available is not None:
            self.available = max(_MIN_AVAILABLE, (1 - _EWMA) * self.available + _EWMA * min(1.0, available))
        self.cpu_share = cpu_s / wall_s
        self._window_weight, self._window_base = 0.0, self.reserved_weight
        lags, self._lags = self._lags, []
        self.lag_s = sum(lags) / len(lags) if lags else 0.0
        if self._audio_s >= _MIN_AUDIO_S:
            measured = max(MIN_COST, cpu_s / self._audio_s)
            self.cost = (1 - _EWMA) * self.cost + _EWMA * measured
        self._audio_s = 0.0
        METRICS.live_cost.set(self.cost)
        METRICS.live_headroom.set(max(0.0, self.headroom()) / self.cost if self.budget is not None else -1)
        METRICS.loop_lag.set(self.lag_s)
        METRICS.live_available.set(self.available)


def _schedstat() -> tuple[int, int]:
    """Nanoseconds this process's threads have run, and waited runnable for a CPU (Linux; else zeros)."""
    run = wait = 0
    with contextlib.suppress(OSError):
        for task in os.scandir("/proc/self/task"):
            with contextlib.suppress(OSError, ValueError, IndexError), open(f"{task.path}/schedstat") as f:
                fields = f.read().split()
                run += int(fields[0])
                wait += int(fields[1])
    return run, wait
