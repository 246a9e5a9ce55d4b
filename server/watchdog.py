"""The clocks of one live stream's waits (its config, each request, each response) on one timer.

A live stream waits for every request (``--stream-idle-seconds``) and for every response to be taken
(``--slow-consumer-seconds``), 50 times a second each at 20 ms chunks. An ``asyncio.timeout`` per wait
arms and cancels a timer each time (a ``TimerHandle`` pushed on the loop's heap and then cancelled):
about 5 us per wait, 10 per chunk, half a millisecond of CPU per stream-second. A :class:`Watchdog`
only notes when a wait began and ended; its one timer fires when a wait could first have run out
(the current one's deadline, or the shortest limit ahead, whichever comes first: the next wait may
have a shorter clock), and re-arms itself if none has. So it fires about once per shortest limit and
stream while the stream is healthy, and at the limit (within a millisecond) for a wait that does
outlast it, when it cancels the task as ``asyncio.timeout`` would. The task's code
catches that ``CancelledError``, sees :attr:`Watchdog.expired`, calls ``task.uncancel()`` and ends
the stream with the error of the wait that expired.

Use from the event loop's thread only.
"""

from __future__ import annotations

import asyncio
import math

__all__ = ["Watchdog"]

# How much earlier than its deadline a timer may fire and still count (the loop runs a timer whose
# time is within its clock's resolution; a millisecond is far below any limit that matters here).
_EARLY_S = 1e-3


class Watchdog:
    """Ends ``task``'s current wait when it outlasts the limit it was started with.

    ``begin(limit_s, what)`` before an await and ``end()`` after it (in a ``finally``). When a wait
    outlasts its limit, the task is cancelled and :attr:`expired` holds ``(what, limit_s)``.
    ``shortest_s`` is the shortest limit any wait will use: the timer is never armed further ahead than
    that, so a wait beginning at any moment is caught in time.
    """

    __slots__ = ("_loop", "_shortest_s", "_task", "_timer", "expired", "limit_s", "since", "what")

    def __init__(self, task: asyncio.Task[object], shortest_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = task
        self._shortest_s = max(0.0, shortest_s)
        self.since = math.inf   # loop time the current wait began; inf while not waiting
        self.limit_s = 0.0
        self.what = ""
        self.expired: tuple[str, float] | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(self._loop.time() + self._shortest_s,
                                                                     self._check)

    def begin(self, limit_s: float, what: str) -> None:
        self.limit_s = limit_s
        self.what = what
        self.since = self._loop.time()

    def end(self) -> None:
        self.since = math.inf

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        now = self._loop.time()
        if self.since == math.inf:   # between waits: the next one begins no earlier than now
            self._timer = self._loop.call_at(now + self._shortest_s, self._check)
            return
        deadline = self.since + self.limit_s
        if now + _EARLY_S < deadline:   # the wait in progress began after the timer was armed
            # Its own deadline, or sooner: a wait with a shorter limit may follow it before then.
            self._timer = self._loop.call_at(min(deadline, now + self._shortest_s), self._check)
            return
        self._timer = None
        self.expired = (self.what, self.limit_s)
        self._task.cancel()
