"""gRPC keepalive, live: the server refuses clients that ping too often but never the client library's
pings, and it finds a peer that vanished without closing its connection.

Each test runs a real server, with clients through tests/h2_proxy.py, which notes the HTTP/2 frames
(PING, GOAWAY) and can blackhole a connection. Times are kept short with the server's keepalive
settings where the test needs it; the defaults stay as they ship.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import ServerProcess, create_key, free_port, scrape_metrics, start_server
from h2_proxy import H2Frame, H2Proxy

from client.channel import CHANNEL_OPTIONS, channel_options
from hushwire.contract import keepalive, pcm
from hushwire.settings import SETTINGS
from hushwire.v1 import enhancer_pb2, enhancer_pb2_grpc

ENHANCE_YOUR_CALM = 0xB   # the HTTP/2 error code of GOAWAY too_many_pings


def _config() -> enhancer_pb2.StreamEnhanceRequest:
    return enhancer_pb2.StreamEnhanceRequest(config=enhancer_pb2.StreamConfig(
        sample_rate_hz=16000, channels=1, encoding=enhancer_pb2.SAMPLE_ENCODING_FLOAT32))


def _audio(seconds: float) -> enhancer_pb2.StreamEnhanceRequest:
    return enhancer_pb2.StreamEnhanceRequest(audio=pcm.encode(np.zeros((int(16000 * seconds), 1)), pcm.FLOAT32))


def _quiet_stream(channel: grpc.Channel, key: str, stop: threading.Event) -> grpc.Future:
    """A stream that sends a config and 0.1 s of audio, reads both replies, then sends nothing (no data
    either way: only pings cross the connection) until ``stop`` is set, then half-closes."""
    def requests() -> Iterator[enhancer_pb2.StreamEnhanceRequest]:
        yield _config()
        yield _audio(0.1)
        stop.wait(60)

    call = enhancer_pb2_grpc.EnhancerStub(channel).StreamEnhance(requests(), metadata=(("authorization", key),))
    next(call)
    next(call)
    return call


def _ended(call: grpc.Future, timeout: float) -> grpc.StatusCode | None:
    """The call's status once it has ended, or None if it has not within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not call.done():
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return call.code()


def _pings(frames: list[H2Frame], to_server: bool) -> list[H2Frame]:
    return [f for f in frames if f.kind == "PingFrame" and "ACK" not in f.flags and f.to_server == to_server]


def _streams_open(metrics_port: int) -> float:
    return scrape_metrics(metrics_port)[("hushwire_streams_open", ())]


def test_settings_default_to_the_contract() -> None:
    """The settings table takes the contract's numbers as its defaults, so a server at its defaults takes
    exactly the contract's options, and the client library's channels carry the clients' side of it."""
    defaults = [SETTINGS[name].default for name in
                ("keepalive_seconds", "keepalive_timeout_seconds", "keepalive_min_ping_seconds")]
    assert defaults == [keepalive.KEEPALIVE_INTERVAL_S, keepalive.KEEPALIVE_TIMEOUT_S, keepalive.MIN_PING_INTERVAL_S]
    assert keepalive.server_options(*defaults) == keepalive.SERVER_OPTIONS
    assert set(keepalive.CLIENT_OPTIONS) <= set(CHANNEL_OPTIONS)
    # A caller's option replaces the default rather than following it (grpc would take the first).
    scaled = channel_options(keepalive.client_options(1.0))
    assert len(scaled) == len(dict(scaled)) and dict(scaled)["grpc.keepalive_time_ms"] == 1000
    # A client on the interval pings twice as far apart as the server's minimum allows.
    assert dict(keepalive.CLIENT_OPTIONS)["grpc.keepalive_time_ms"] \
        == 2 * dict(keepalive.SERVER_OPTIONS)["grpc.http2.min_ping_interval_without_data_ms"]


@pytest.mark.slow
def test_a_client_that_pings_too_often_is_sent_goaway_too_many_pings(server: ServerProcess, api_key: str,
                                                                      tmp_path: Path) -> None:
    """A server at its defaults accepts pings 15 s apart at the closest. A client that pings every second
    on a quiet stream gets two strikes, then GOAWAY ENHANCE_YOUR_CALM ``too_many_pings`` on the third
    early ping, and its call ends UNAVAILABLE."""
    stop = threading.Event()
    pinger = [("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_timeout_ms", 5000),
              ("grpc.http2.max_pings_without_data", 0)]
    with H2Proxy(server.target, tmp_path / "frames.jsonl") as proxy, \
            grpc.insecure_channel(proxy.target, options=pinger) as channel:
        try:
            call = _quiet_stream(channel, api_key, stop)
            quiet_from = time.monotonic()
            goaway = proxy.wait_for(lambda f: f.kind == "GoAwayFrame", 15)
            code = _ended(call, 10)
        finally:
            stop.set()
        frames = proxy.frames
    assert goaway is not None and not goaway.to_server, "no GOAWAY from the server within 15 s"
    assert goaway.error_code == ENHANCE_YOUR_CALM and goaway.debug == "too_many_pings", goaway
    early = [p for p in _pings(frames, to_server=True) if quiet_from <= p.at <= goaway.at]
    assert len(early) >= keepalive.MAX_PING_STRIKES + 1, early
    assert goaway.at - quiet_from < 10
    assert code == grpc.StatusCode.UNAVAILABLE


SCALE = 1 / 30   # the time-scaled server below: its clocks at 1/30 of the defaults, in seconds
QUICK_S = 1.0    # its keepalive interval and timeout (30 s and 10 s by default)


@pytest.fixture(scope="module")
def quick_keepalive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, int]]:
    """A server that accepts pings 0.5 s apart (15 s by default: 1/30 of it, for a client library scaled
    the same way), pings every 2 s (so that such a client, on its 1 s interval, pings first), and gives up
    on a ping after 1 s; one stream per user, so a stream that is not freed blocks the next."""
    data = tmp_path_factory.mktemp("keepalive")
    metrics = free_port()
    key = create_key(data)
    srv = start_server(data, "--metrics-port", str(metrics), "--keepalive-seconds", str(2 * QUICK_S),
                       "--keepalive-timeout-seconds", str(QUICK_S),
                       "--keepalive-min-ping-seconds", str(keepalive.MIN_PING_INTERVAL_S * SCALE),
                       "--max-streams-per-user", "1")
    yield srv, key, metrics
    assert srv.stop() == 0, srv.log


@pytest.mark.slow
def test_the_client_library_keepalive_is_never_refused(quick_keepalive: tuple[ServerProcess, str, int],
                                                       tmp_path: Path) -> None:
    """The client library pings every 30 s, and a server accepts pings 15 s apart: here both at 1/30, its
    channel options with the client side of the contract scaled as the server's minimum is. On a quiet
    stream for 6 of its intervals it pings about every interval, and the server answers every ping and
    refuses none (no GOAWAY); the stream stays open and ends normally."""
    srv, key, metrics = quick_keepalive
    stop = threading.Event()
    options = channel_options(keepalive.client_options(keepalive.KEEPALIVE_INTERVAL_S * SCALE,
                                                       keepalive.KEEPALIVE_TIMEOUT_S * SCALE))
    with H2Proxy(srv.target, tmp_path / "frames.jsonl") as proxy, \
            grpc.insecure_channel(proxy.target, options=options) as channel:
        call = _quiet_stream(channel, key, stop)
        quiet_from = time.monotonic()
        time.sleep(6 * keepalive.KEEPALIVE_INTERVAL_S * SCALE)
        assert not call.done() and _streams_open(metrics) == 1
        stop.set()
        replies = list(call)   # the flushed tail, and an OK status
        frames = proxy.frames
    assert len(replies) == 1 and call.code() == grpc.StatusCode.OK
    pings = [p for p in _pings(frames, to_server=True) if p.at >= quiet_from]
    assert len(pings) >= 4, f"the client pinged {len(pings)} times in 6 intervals"
    assert not [f for f in frames if f.kind == "GoAwayFrame"]


@pytest.mark.slow
def test_a_vanished_peer_is_found_and_its_stream_freed(quick_keepalive: tuple[ServerProcess, str, int],
                                                       tmp_path: Path) -> None:
    """A client whose connection goes silent without a FIN or RST (the proxy stops forwarding both ways:
    a NAT that forgot the mapping, a laptop asleep). The server's unanswered ping closes the connection
    within its interval plus its timeout (2 s + 1 s here), which ends the stream and frees its slot,
    long before the idle-stream clock (30 s) would."""
    srv, key, metrics = quick_keepalive
    stop = threading.Event()
    with H2Proxy(srv.target, tmp_path / "frames.jsonl") as proxy, \
            grpc.insecure_channel(proxy.target) as channel:   # a client without keepalive of its own
        call = _quiet_stream(channel, key, stop)
        try:
            assert _streams_open(metrics) == 1
            proxy.blackhole()
            vanished = time.monotonic()
            while _streams_open(metrics) != 0:
                assert time.monotonic() - vanished < 3 * QUICK_S + 4, "the stream of a vanished peer stayed open"
                time.sleep(0.05)
            found_after = time.monotonic() - vanished
        finally:
            stop.set()
            call.cancel()
    print(f"vanished peer's stream freed after {found_after:.2f} s")
    assert found_after > QUICK_S / 2   # found by a ping that went unanswered, not by anything at once
    assert "stream closed" in srv.log
    # Its slot is free again: the user's one stream is allowed.
    with grpc.insecure_channel(srv.target) as channel:
        replies = list(enhancer_pb2_grpc.EnhancerStub(channel).StreamEnhance(
            iter([_config(), _audio(0.1)]), metadata=(("authorization", key),), timeout=10))
    assert len(replies) == 3
