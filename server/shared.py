"""State the sibling processes of one ``hushwire serve --processes N`` share: a small mmap'd file.

Each process of the group serves its own connections (the kernel spreads new connections over
them with SO_REUSEPORT), so what must hold for the server as a whole lives here, in a file in the
group's run directory that every sibling maps:

- one **slot per process**: its pid, its state (starting, serving, draining), whether admission
  control finds it full, its open live streams and its headroom. The parent's health mirror and
  every sibling's ``hushwire.v1.Enhancer`` health read the group from it;
- the **open live streams per user**, one column per process, so ``--max-streams-per-user`` and
  ``--max-streams`` count the streams of every process, exactly (:meth:`SharedState.open_stream`).

Updates that must be atomic across processes (check a limit, then count the stream) hold an
``flock`` on the run directory's lock file for a few microseconds. The kernel releases an flock
when its holder dies, so a crashed sibling cannot wedge the others; the parent zeroes a dead
sibling's slot and column (:meth:`SharedState.clear`) before it starts a replacement.

The users' table has ``USER_ROWS`` rows found by linear probing from the uid's hash
(:func:`home_row`); a user's row goes as
soon as their last stream closes. It is full only with ``USER_ROWS`` users streaming at once, far
past what one machine's processes can carry, and then a new stream of another user is refused as
OVERLOADED with ``hushwire-refused-for: users`` (not ``cap``: no configured limit was reached).

Standard library only; used from each process's event-loop thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DRAINING", "SERVING", "STARTING", "STATE_NAMES", "STOPPED", "USER_ROWS", "Refused", "SharedState",
           "SlotView", "home_row"]

STARTING, SERVING, DRAINING, STOPPED = 0, 1, 2, 3
# A process's state as the health mirror's body and the ``hushwire_server_processes`` metric name it.
STATE_NAMES = {STARTING: "starting", SERVING: "serving", DRAINING: "draining", STOPPED: "stopped"}
USER_ROWS = 8192          # a power of two (home_row)
_ROW_BITS = USER_ROWS.bit_length() - 1
_FIBONACCI = 0x9E3779B97F4A7C15   # 2**64 / golden ratio: Knuth's multiplicative hashing
_SLOT_FIELDS = 5         # pid, state, full, streams, headroom (float)
_MAGIC = 0x68757368      # "hush"
_EMPTY = -1


def home_row(uid: int) -> int:
    """The users' table row where ``uid``'s search starts. Hashed, not ``uid % USER_ROWS``: uids are
    handed out in sequence, so users 1..N would fill rows 1..N as one cluster, and removing a row
    walks to the end of its cluster (``_delete``) under the group's lock: with 8192 users that was
    2.5 ms a closed stream. Hashed, they spread out, and clusters stay a few rows long."""
    return ((uid * _FIBONACCI) & 0xFFFF_FFFF_FFFF_FFFF) >> (64 - _ROW_BITS)


class Refused(Exception):
    """A new stream over a limit: ``reason`` is "user" (--max-streams-per-user), "cap" (--max-streams)
    or "table" (the users' table is full)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SlotView:
    pid: int
    state: int
    full: bool
    streams: int
    headroom: float


class SharedState:
    """The group's shared file, mapped. ``create`` (the parent) makes it; ``attach`` (a sibling) maps it.

    Layout, all 8-byte cells: header ``[magic, processes]``; ``processes`` slots of ``_SLOT_FIELDS``
    cells; ``USER_ROWS`` uids; ``USER_ROWS x processes`` stream counts.
    """

    def __init__(self, path: Path, processes: int, index: int | None) -> None:
        self.path = path
        self.processes = processes
        self.index = index      # this process's slot (None: the parent)
        self._file = open(path, "r+b")  # noqa: SIM115  (kept open for the mapping's lifetime)
        self._lock = open(path.with_suffix(".lock"), "a+b")  # noqa: SIM115
        self._map = mmap.mmap(self._file.fileno(), self.size(processes))
        self._ints = memoryview(self._map).cast("q")
        self._floats = memoryview(self._map).cast("d")
        if self._ints[0] != _MAGIC or self._ints[1] != processes:
            raise ValueError(f"{path} is not a shared state file for {processes} processes")
        self._slots = 2
        self._uids = self._slots + processes * _SLOT_FIELDS
        self._counts = self._uids + USER_ROWS

    @staticmethod
    def size(processes: int) -> int:
        return 8 * (2 + processes * _SLOT_FIELDS + USER_ROWS * (1 + processes))

    @classmethod
    def create(cls, path: Path, processes: int) -> SharedState:
        size = cls.size(processes)
        with open(path, "w+b") as f:
            f.truncate(size)
            with mmap.mmap(f.fileno(), size) as m, memoryview(m) as raw:
                ints = raw.cast("q")
                ints[0], ints[1] = _MAGIC, processes
                first_uid = 2 + processes * _SLOT_FIELDS
                for row in range(USER_ROWS):
                    ints[first_uid + row] = _EMPTY
                for index in range(processes):
                    ints[2 + index * _SLOT_FIELDS + 1] = STOPPED
                ints.release()
        path.with_suffix(".lock").touch()
        return cls(path, processes, None)

    @classmethod
    def attach(cls, path: Path, processes: int, index: int) -> SharedState:
        return cls(path, processes, index)

    def close(self) -> None:
        self._ints.release()
        self._floats.release()
        self._map.close()
        self._file.close()
        self._lock.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)

    # -- slots --------------------------------------------------------------------------------------

    def _slot(self, index: int) -> int:
        return self._slots + index * _SLOT_FIELDS

    def slot(self, index: int) -> SlotView:
        s = self._slot(index)
        return SlotView(int(self._ints[s]), int(self._ints[s + 1]), bool(self._ints[s + 2]), int(self._ints[s + 3]),
                        float(self._floats[s + 4]))

    def slots(self) -> list[SlotView]:
        return [self.slot(i) for i in range(self.processes)]

    def set_state(self, state: int, pid: int | None = None) -> None:
        s = self._slot(self._me())
        if pid is not None:
            self._ints[s] = pid
        self._ints[s + 1] = state

    def set_full(self, full: bool) -> None:
        self._ints[self._slot(self._me()) + 2] = int(full)

    def set_headroom(self, headroom: float) -> None:
        self._floats[self._slot(self._me()) + 4] = headroom

    def group_full(self) -> bool:
        """Whether every serving process is full (no process of the group would admit a stream)."""
        serving = [v for v in self.slots() if v.state == SERVING]
        return bool(serving) and all(v.full for v in serving)

    def clear(self, index: int) -> None:
        """Forget a process that exited (the parent does this before starting its replacement)."""
        with self._locked():
            s = self._slot(index)
            for k in range(_SLOT_FIELDS - 1):
                self._ints[s + k] = 0
            self._ints[s + 1] = STOPPED
            self._floats[s + 4] = 0.0
            kept = []
            for row in range(USER_ROWS):
                self._ints[self._counts + row * self.processes + index] = 0
                uid = self._ints[self._uids + row]
                if uid != _EMPTY and self._user_total(row) > 0:
                    kept.append((uid, self._row_counts(row)))
                self._set_row(row, _EMPTY, [0] * self.processes)
            for uid, counts in kept:   # rebuilt without the rows that are empty now
                row, _ = self._find(uid)
                self._set_row(row, uid, counts)

    def _me(self) -> int:
        if self.index is None:
            raise RuntimeError("the parent has no slot")
        return self.index

    # -- live streams per user ------------------------------------------------------------------------
    #
    # Open addressing with linear probing from ``home_row(uid)``; a row whose streams all closed is
    # deleted at once by shifting back the rows after it (Knuth's algorithm R), so a lookup stops at
    # the first empty row after a few steps however many users came and went.

    def _user_total(self, row: int) -> int:
        base = self._counts + row * self.processes
        return sum(self._ints[base : base + self.processes])

    def _row_counts(self, row: int) -> list[int]:
        base = self._counts + row * self.processes
        return list(self._ints[base : base + self.processes])

    def _set_row(self, row: int, uid: int, counts: list[int]) -> None:
        self._ints[self._uids + row] = uid
        base = self._counts + row * self.processes
        for k, n in enumerate(counts):
            self._ints[base + k] = n

    def _find(self, uid: int) -> tuple[int, bool]:
        """``uid``'s row and True, or the empty row where it would go and False; (-1, False) when full."""
        start = home_row(uid)
        for k in range(USER_ROWS):
            row = (start + k) % USER_ROWS
            found = self._ints[self._uids + row]
            if found == uid:
                return row, True
            if found == _EMPTY:
                return row, False
        return -1, False

    def _delete(self, row: int) -> None:
        hole = row
        self._set_row(hole, _EMPTY, [0] * self.processes)
        probe = hole
        while True:
            probe = (probe + 1) % USER_ROWS
            uid = self._ints[self._uids + probe]
            if uid == _EMPTY:
                return
            home = home_row(uid)
            # The row at ``probe`` may stay unless its home lies cyclically outside (hole, probe].
            stays = hole < home <= probe if hole <= probe else (home > hole or home <= probe)
            if not stays:
                self._set_row(hole, uid, self._row_counts(probe))
                self._set_row(probe, _EMPTY, [0] * self.processes)
                hole = probe

    def open_stream(self, uid: int, max_per_user: int, max_streams: int | None) -> None:
        """Count a new stream of ``uid`` in this process, or raise :class:`Refused` when the user's or
        the group's limit is reached."""
        me = self._me()
        if max_per_user <= 0:
            raise Refused("user")
        with self._locked():
            if max_streams is not None and sum(v.streams for v in self.slots()) >= max_streams:
                raise Refused("cap")
            row, found = self._find(uid)
            if row < 0:
                raise Refused("table")
            if not found:
                self._set_row(row, uid, [0] * self.processes)
            elif self._user_total(row) >= max_per_user:
                raise Refused("user")
            self._ints[self._counts + row * self.processes + me] += 1
            self._ints[self._slot(me) + 3] += 1

    def close_stream(self, uid: int) -> None:
        """A stream of ``uid`` counted by :meth:`open_stream` in this process ended."""
        me = self._me()
        with self._locked():
            if self._ints[self._slot(me) + 3] > 0:
                self._ints[self._slot(me) + 3] -= 1
            row, found = self._find(uid)
            if not found:
                return
            cell = self._counts + row * self.processes + me
            if self._ints[cell] > 0:
                self._ints[cell] -= 1
            if self._user_total(row) == 0:
                self._delete(row)

    def user_streams(self, uid: int) -> int:
        """Open streams of ``uid`` in the whole group (for tests and diagnostics)."""
        with self._locked():
            row, found = self._find(uid)
            return self._user_total(row) if found else 0
