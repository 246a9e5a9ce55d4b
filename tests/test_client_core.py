"""The live stream's sans-IO core (client/core.py) driven directly, with a clock the test moves.

The core makes no call, so these feed it the events the adapters report (real protobuf responses,
real client errors) and check its decisions: how long to wait, and what to raise. The same rules
against real servers: tests/test_stream_resume.py, tests/test_client_retry.py, tests/test_replicas.py.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from client.core import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    SLOW_CONSUMER_SECONDS,
    RetryBudget,
    Settings,
    StreamCore,
    Update,
)
from client.errors import HushwireClientError
from hushwire.settings import SETTINGS
from hushwire.v1 import enhancer_pb2

RATE = 16000
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
LOST = HushwireClientError(UNAVAILABLE, None, "Socket closed")              # a server gone, no trailer
OVERLOADED = HushwireClientError(UNAVAILABLE, "OVERLOADED", "full")         # a server refusing a new stream
RESET = HushwireClientError(grpc.StatusCode.CANCELLED, None, "Received RST_STREAM with error code 8")
# A hushwire server's own reset of a stuck stream: its status arrives, without the code's trailer.
SERVER_RESET = HushwireClientError(grpc.StatusCode.RESOURCE_EXHAUSTED, None,
                                   "SLOW_CONSUMER: the client read no response for 10 s (the stream was reset)")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _core(clock: Clock, rng: float = 0.5, **kw: object) -> StreamCore:
    settings = Settings(RATE, 1, enhancer_pb2.SAMPLE_ENCODING_FLOAT32, None)
    return StreamCore(settings, target="lb:50051", budget_s=10.0, clock=clock, rng=lambda: rng, **kw)  # type: ignore[arg-type]


def _first(delay: int = 160) -> enhancer_pb2.StreamEnhanceResponse:
    return enhancer_pb2.StreamEnhanceResponse(algorithmic_delay_samples=delay)


def _audio(frames: int) -> enhancer_pb2.StreamEnhanceResponse:
    return enhancer_pb2.StreamEnhanceResponse(audio=np.zeros(frames, "<f4").tobytes(), voice_probability=0.5)


def test_backoff_is_jittered_exponential_and_capped() -> None:
    for rng, share in ((0.0, 0.5), (1.0, 1.0)):  # each wait lies in [cap/2, cap]
        clock = Clock()
        budget = RetryBudget(60.0, clock, lambda r=rng: r)  # type: ignore[misc]
        waits = [budget.wait_after(OVERLOADED) for _ in range(8)]
        caps = [min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**n) for n in range(8)]
        assert waits == pytest.approx([c * share for c in caps])
    # Different clients draw different waits: refused together, they come back apart.
    spread = {RetryBudget(60.0, Clock(), lambda r=r: r).wait_after(OVERLOADED) for r in (0.1, 0.5, 0.9)}  # type: ignore[misc]
    assert len(spread) == 3


def test_the_budget_counts_from_the_first_failure_and_bounds_the_last_wait() -> None:
    clock = Clock()
    budget = RetryBudget(1.0, clock, lambda: 1.0)
    assert budget.left() == 1.0
    total = 0.0
    while (wait := budget.wait_after(OVERLOADED)) is not None:
        total += wait
        clock.now += wait
    assert total == pytest.approx(1.0)  # the last wait is cut to the deadline, then it gives up
    assert budget.left() == 0.0


@pytest.mark.parametrize(("err", "retry"), [
    (OVERLOADED, True),
    (HushwireClientError(UNAVAILABLE, "SERVICE_UNAVAILABLE", "draining"), True),
    (LOST, True),
    (RESET, True),                                                            # HAProxy's lost backend
    (HushwireClientError(grpc.StatusCode.INTERNAL, None, "RST_STREAM"), True),  # nginx's
    (HushwireClientError(grpc.StatusCode.INTERNAL, "INTERNAL", "a bug"), False),
    (HushwireClientError(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "quota"), False),
    (HushwireClientError(grpc.StatusCode.RESOURCE_EXHAUSTED, "SLOW_CONSUMER", "stopped reading"), False),
    (HushwireClientError(grpc.StatusCode.UNAUTHENTICATED, "API_KEY_NOT_FOUND", "no"), False),
])
def test_what_is_retried(err: HushwireClientError, retry: bool) -> None:
    assert (RetryBudget(10.0, Clock()).wait_after(err) is not None) == retry


def test_opening_retries_overloaded_within_the_budget_then_raises_it() -> None:
    clock = Clock()
    core = _core(clock)
    attempts = 0
    with pytest.raises(HushwireClientError) as info:
        while True:
            core.new_call()
            attempts += 1
            clock.now += core.open_failed(OVERLOADED)
    assert info.value is OVERLOADED  # the server's own code and words reach the caller
    assert 5 <= attempts <= 12 and clock.now - 100.0 == pytest.approx(10.0)


def test_without_resume_nothing_is_retried() -> None:
    core = _core(Clock(), resume=False)
    core.new_call()
    with pytest.raises(HushwireClientError) as info:
        core.open_failed(OVERLOADED)
    assert info.value is OVERLOADED


def test_a_lost_server_is_resumed_and_accounted() -> None:
    clock = Clock()
    core = _core(clock)
    call = core.new_call()
    reqs = [core.request(call, np.zeros(320, np.float32)) for _ in range(10)]  # 3200 frames sent
    assert core.started(call, _first(160)) is None
    core.reading(call)
    out = core.output(call, _audio(1000))  # answers input up to frame 840
    assert out.audio.shape == (1000, 1) and len(reqs) == 10
    core.reading(call)
    core.ended(call)  # as grpc's done callback: the caller was waiting, not idle
    assert core.call_failed(call, LOST) == 0.0  # at once: a balancer picks another replica
    clock.now += 0.3
    core.new_call()
    clock.now += core.open_failed(OVERLOADED)  # the first replica it tried is full
    again = core.new_call()
    note = core.started(again, _first(160))
    assert note is not None and note.audio.shape == (0, 1) and note.backend_lost is not None
    ev = note.backend_lost
    assert (ev.status, ev.attempts, ev.frames_lost, ev.delay_samples) == (UNAVAILABLE, 2, 3200 - 840, 160)
    assert ev.outage_s == pytest.approx(clock.now - 100.0)
    assert core.reconnects == [ev]


def test_a_resume_that_runs_out_of_budget_says_so() -> None:
    clock = Clock()
    core = _core(clock)
    call = core.new_call()
    core.started(call, _first())
    core.reading(call)
    core.ended(call)
    core.call_failed(call, LOST)
    with pytest.raises(HushwireClientError) as info:
        while True:
            core.new_call()
            clock.now += core.open_failed(LOST)
    assert info.value.status == UNAVAILABLE
    assert "lost the hushwire server at lb:50051 mid-stream" in info.value.msg
    assert "could not resume the stream within 10 s" in info.value.msg
    assert core.reconnects == []


@pytest.mark.parametrize("err", [RESET, LOST])
def test_a_caller_that_stopped_reading_is_not_resumed(err: HushwireClientError) -> None:
    """The server resets a stream whose client reads nothing (its SLOW_CONSUMER status is stuck behind
    the unread audio); the reset looks like a lost server, but the caller stopped, so no resume."""
    clock = Clock()
    core = _core(clock)
    call = core.new_call()
    core.started(call, _first())
    core.reading(call)
    core.output(call, _audio(320))  # handed to the caller, which then reads nothing more
    clock.now += SLOW_CONSUMER_SECONDS + 5
    core.ended(call)                # the reset arrives while the caller is away
    clock.now += 30                 # it comes back, drains what was buffered, and meets the error
    core.reading(call)
    with pytest.raises(HushwireClientError) as info:
        core.call_failed(call, err)
    assert info.value.code == "SLOW_CONSUMER" and info.value.status == err.status
    assert "read no output for 15.0 s" in info.value.msg and "not resumed" in info.value.msg
    assert core.reconnects == []


def test_a_server_reset_met_after_the_buffered_output_is_slow_consumer() -> None:
    """The server's own reset of a stuck stream brings its status without the code's trailer, and grpc
    hands it over only once the caller has read what was buffered: the call ends while the caller reads
    again. The caller's earlier absence is what names it SLOW_CONSUMER."""
    clock = Clock()
    core = _core(clock)
    call = core.new_call()
    core.started(call, _first())
    core.reading(call)
    core.output(call, _audio(320))
    clock.now += SLOW_CONSUMER_SECONDS + 8   # away; meanwhile the server resets the stream
    core.reading(call)                       # back: it drains the buffered output ...
    core.output(call, _audio(320))
    core.reading(call)
    core.ended(call)                         # ... and only then does grpc end the call
    with pytest.raises(HushwireClientError) as info:
        core.call_failed(call, SERVER_RESET)
    assert info.value.code == "SLOW_CONSUMER" and info.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "read no output for 18.0 s" in info.value.msg
    # The same status after pauses shorter than the server's patience is left as it came (no code).
    call = core.new_call()
    core.started(call, _first())
    core.reading(call)
    core.output(call, _audio(320))
    clock.now += SLOW_CONSUMER_SECONDS - 1
    core.reading(call)
    core.ended(call)
    with pytest.raises(HushwireClientError) as info:
        core.call_failed(call, SERVER_RESET)
    assert info.value.code is None


def test_the_client_reads_the_servers_default_patience() -> None:
    assert SETTINGS["slow_consumer_seconds"].default == SLOW_CONSUMER_SECONDS


@pytest.mark.parametrize("stated", [3.0, 30.0])
def test_the_servers_stated_patience_decides_not_the_default(stated: float) -> None:
    """A server run with another --slow-consumer-seconds says so in the stream's initial metadata: a
    pause of 5 s is SLOW_CONSUMER against a server that waits 3 s, and a lost server (resumed) against
    one that waits 30 s, whatever the default (10 s) would say."""
    clock = Clock()
    core = _core(clock)
    call = core.new_call()
    core.started(call, _first(), stated)
    core.reading(call)
    core.output(call, _audio(320))
    clock.now += 5.0
    core.ended(call)
    core.reading(call)
    if stated < 5.0:
        with pytest.raises(HushwireClientError) as info:
            core.call_failed(call, RESET)
        assert info.value.code == "SLOW_CONSUMER" and "stops reading for 3 s" in info.value.msg, info.value
    else:
        assert core.call_failed(call, RESET) == 0.0


def test_a_caller_that_paused_briefly_is_resumed() -> None:
    clock = Clock()
    core = _core(clock)
    call = core.new_call()
    core.started(call, _first())
    clock.now += SLOW_CONSUMER_SECONDS - 1  # a pause shorter than the server's patience
    core.ended(call)
    assert core.call_failed(call, RESET) == 0.0


def test_the_callers_cancel_ends_the_stream_for_good() -> None:
    clock = Clock()
    core = _core(clock)
    call = core.new_call()
    core.started(call, _first())
    core.cancel()
    for decide in (lambda: core.call_failed(call, RESET), lambda: core.open_failed(LOST), core.new_call):
        with pytest.raises(HushwireClientError) as info:
            decide()
        assert info.value.status == grpc.StatusCode.CANCELLED and "cancelled by its caller" in info.value.msg


def test_a_new_call_restores_the_latest_settings() -> None:
    core = _core(Clock())
    first = core.new_call()
    core.request(first, Update(attenuation_limit_db=6.0))
    core.request(first, Update(bypass=True))
    config, bypass = core.opening()
    assert config.config.attenuation_limit_db == 6.0 and config.config.sample_rate_hz == RATE
    assert bypass.update.bypass is True


def test_only_an_accepted_live_call_takes_the_callers_items() -> None:
    clock = Clock()
    core = _core(clock)
    woken: list[int] = []
    core.wake = lambda: woken.append(1)
    refused = core.new_call()
    assert core.takes_items(refused) is None          # wait: the server has not accepted it yet
    clock.now += core.open_failed(OVERLOADED)
    assert core.takes_items(refused) is False and woken  # refused: it took nothing, and never will
    call = core.new_call()
    core.started(call, _first())
    assert core.takes_items(call) is True
    core.ended(call)
    core.call_failed(call, LOST)
    assert core.takes_items(call) is False             # what it was about to take goes to the next call
    again = core.new_call()
    assert core.takes_items(again) is None and core.takes_items(call) is False
