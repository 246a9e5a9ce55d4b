"""The shared state of a group of server processes (server/shared.py), against a model, in one process.

Several siblings' views of one real mmap'd file (each its own mapping and lock file descriptor), with
uids chosen to collide in the users' table, so that probing and deletion are exercised.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from server.shared import SERVING, USER_ROWS, Refused, SharedState, home_row


def _rows_in_use(state: SharedState) -> int:
    return sum(1 for row in range(USER_ROWS) if state._ints[state._uids + row] != -1)


def _colliding() -> list[int]:
    """39 uids for each of the rows 0, 1, 2 and the last: long probing chains, one that wraps around."""
    wanted = {0: [], 1: [], 2: [], USER_ROWS - 1: []}   # type: dict[int, list[int]]
    uid = 0
    while any(len(v) < 39 for v in wanted.values()):
        uid += 1
        row = home_row(uid)
        if row in wanted and len(wanted[row]) < 39:
            wanted[row].append(uid)
    return [u for v in wanted.values() for u in v]


def _longest_run(state: SharedState) -> int:
    """The longest run of rows in use (cyclic): how far a lookup or a removal may walk."""
    used = [state._ints[state._uids + row] != -1 for row in range(USER_ROWS)]
    longest = run = 0
    for u in used + used:
        run = run + 1 if u else 0
        longest = max(longest, min(run, USER_ROWS))
    return longest


def test_users_numbered_in_sequence_do_not_pile_up(tmp_path: Path) -> None:
    """uids are handed out 1, 2, 3, ...: hashed to their rows, 4000 users streaming at once leave no run of
    rows in use longer than a few, so opening or closing a stream walks a few rows under the group's lock.
    (As ``uid % USER_ROWS`` they made one run of 4000, walked by every closed stream: 8192 users took 20 s
    to close in order.)"""
    parent = SharedState.create(tmp_path / "state", 2)
    sibling = SharedState.attach(tmp_path / "state", 2, 0)
    for uid in range(1, 4001):
        sibling.open_stream(uid, 1, None)
    assert _rows_in_use(parent) == 4000
    assert _longest_run(parent) <= 8, _longest_run(parent)
    for uid in range(1, 4001):
        sibling.close_stream(uid)
    assert _rows_in_use(parent) == 0
    for state in (parent, sibling):
        state.close()


def test_streams_per_user_against_a_model(tmp_path: Path) -> None:
    parent = SharedState.create(tmp_path / "state", 3)
    siblings = [SharedState.attach(tmp_path / "state", 3, i) for i in range(3)]
    rng = random.Random(0)
    uids = _colliding()
    open_: Counter[tuple[int, int]] = Counter()   # (sibling, uid) -> streams
    limit = 3
    for _ in range(20000):
        i, uid = rng.randrange(3), rng.choice(uids)
        total = sum(n for (_, u), n in open_.items() if u == uid)
        if rng.random() < 0.55:
            if total >= limit:
                with pytest.raises(Refused) as refused:
                    siblings[i].open_stream(uid, limit, None)
                assert refused.value.reason == "user"
            else:
                siblings[i].open_stream(uid, limit, None)
                open_[i, uid] += 1
        elif open_[i, uid]:
            siblings[i].close_stream(uid)
            open_[i, uid] -= 1
        assert parent.user_streams(uid) == sum(n for (_, u), n in open_.items() if u == uid)
    for uid in uids:
        assert parent.user_streams(uid) == sum(n for (_, u), n in open_.items() if u == uid)
    # Rows go with their last stream: only users with open streams hold one.
    assert _rows_in_use(parent) == len({u for (_, u), n in open_.items() if n})
    assert [v.streams for v in parent.slots()] == [sum(n for (s, _), n in open_.items() if s == i) for i in range(3)]

    # A dead sibling's streams are forgotten, the others' kept.
    parent.clear(1)
    for uid in uids:
        assert parent.user_streams(uid) == sum(n for (s, u), n in open_.items() if u == uid and s != 1)
    assert _rows_in_use(parent) == len({u for (s, u), n in open_.items() if n and s != 1})
    assert parent.slot(1).streams == 0
    for state in (parent, *siblings):
        state.close()


def test_cap_and_group_state(tmp_path: Path) -> None:
    parent = SharedState.create(tmp_path / "state", 2)
    a, b = (SharedState.attach(tmp_path / "state", 2, i) for i in range(2))
    a.open_stream(1, 10, 3)
    b.open_stream(2, 10, 3)
    b.open_stream(3, 10, 3)
    with pytest.raises(Refused) as refused:
        a.open_stream(4, 10, 3)
    assert refused.value.reason == "cap"
    b.close_stream(3)
    a.open_stream(4, 10, 3)
    with pytest.raises(Refused):
        a.open_stream(5, 0, None)   # a per-user limit of 0 takes nothing

    assert not parent.group_full()   # nobody serving yet
    a.set_state(SERVING, 11)
    b.set_state(SERVING, 12)
    a.set_full(True)
    assert not parent.group_full()
    b.set_full(True)
    assert parent.group_full()
    parent.clear(1)                  # a full sibling that died no longer counts
    assert parent.group_full() and parent.slot(1).pid == 0
    for state in (parent, a, b):
        state.close()
