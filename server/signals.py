"""The stop signals of ``hushwire serve``: a SIGTERM or SIGINT at any moment is a normal stop.

Python's default for SIGTERM kills the process at once, and for SIGINT raises KeyboardInterrupt
wherever the code is: a signal that came while the server was still starting used to end it
half-started (exit status 1 or a traceback, a sibling process gone without its drain). So:

- ``serve`` blocks both signals as its first step (:func:`hold`); one that arrives while the server
  is being set up waits, pending;
- the asyncio loop then takes them over (:func:`catch`), which delivers one that waited: the server
  finishes what it was starting, then drains as on any stop, and exits 0;
- a sibling process of ``serve --processes N`` records them (:func:`record`) as its first step and
  its loop takes them over the same way, so a SIGTERM that reaches it while it starts (a service
  manager's, sent to every process of the group; Ctrl-C's SIGINT) is a drain too. (A process that
  multiprocessing spawns does not inherit the signal mask, so blocking cannot cover it.) The parent
  itself stops its siblings through their pipes, not with a signal (server/group.py).

Only the first moments of each interpreter, before these run, are left to the default: then no
job, stream or worker process exists yet.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

__all__ = ["STOP_SIGNALS", "catch", "hold", "record"]

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_recorded: list[int] = []   # stop signals that came after record(), before catch()


def hold() -> None:
    """Block the stop signals in this thread until :func:`catch` (threads started meanwhile inherit it)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def record() -> None:
    """Note the stop signals from now on, until :func:`catch` (the first step of a process that cannot
    have them blocked from its start)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: _recorded.append(signum))


def catch(loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None]) -> None:
    """Call ``on_stop`` in ``loop`` on each stop signal from now on, one that waited or was recorded
    included."""
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if _recorded:
        _recorded.clear()
        loop.call_soon(on_stop)
