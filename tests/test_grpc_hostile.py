"""Hostile gRPC clients: no config, never reading, deadlines, cancels. State is freed every time."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import ServerProcess, create_key, free_port, start_server
from h2_proxy import H2Proxy
from prometheus_client.parser import text_string_to_metric_families

from hushwire.contract import pcm
from hushwire.v1 import enhancer_pb2, enhancer_pb2_grpc


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, int]]:
    data = tmp_path_factory.mktemp("hostile")
    port = free_port()
    key = create_key(data)
    srv = start_server(data, "--metrics-port", str(port))
    yield srv, key, port
    assert srv.stop() == 0


def _gauge(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def _wait_gauge(port: int, name: str, value: float, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _gauge(port, name) != value:
        assert time.monotonic() < deadline, f"{name} stayed at {_gauge(port, name)}, expected {value}"
        time.sleep(0.1)


def _config() -> enhancer_pb2.StreamEnhanceRequest:
    return enhancer_pb2.StreamEnhanceRequest(config=enhancer_pb2.StreamConfig(
        sample_rate_hz=16000, channels=1, encoding=enhancer_pb2.SAMPLE_ENCODING_FLOAT32))


def _audio(seconds: float) -> enhancer_pb2.StreamEnhanceRequest:
    return enhancer_pb2.StreamEnhanceRequest(audio=pcm.encode(np.zeros((int(16000 * seconds), 1)), pcm.FLOAT32))


def _trailer(err: grpc.RpcError) -> str | None:
    return dict(err.trailing_metadata() or ()).get("hushwire-error-code")


def test_deadline_is_honoured_and_frees_the_stream(metered: tuple[ServerProcess, str, int]) -> None:
    srv, key, port = metered
    stop = threading.Event()

    def slow() -> Iterator[enhancer_pb2.StreamEnhanceRequest]:
        yield _config()
        stop.wait(5)

    with grpc.insecure_channel(srv.target) as ch:
        call = enhancer_pb2_grpc.EnhancerStub(ch).StreamEnhance(slow(), metadata=(("authorization", key),),
                                                                 timeout=1.0)
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        stop.set()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_gauge(port, "hushwire_streams_open", 0)


def test_cancelled_stream_frees_its_state(metered: tuple[ServerProcess, str, int]) -> None:
    srv, key, port = metered
    stop = threading.Event()

    def requests() -> Iterator[enhancer_pb2.StreamEnhanceRequest]:
        yield _config()
        yield _audio(0.1)
        stop.wait(10)

    with grpc.insecure_channel(srv.target) as ch:
        call = enhancer_pb2_grpc.EnhancerStub(ch).StreamEnhance(requests(), metadata=(("authorization", key),))
        next(call)
        next(call)
        _wait_gauge(port, "hushwire_streams_open", 1)
        call.cancel()
        stop.set()
    _wait_gauge(port, "hushwire_streams_open", 0)


@pytest.mark.slow
def test_stream_without_config_times_out(metered: tuple[ServerProcess, str, int]) -> None:
    srv, key, _ = metered
    stop = threading.Event()

    def nothing() -> Iterator[enhancer_pb2.StreamEnhanceRequest]:
        stop.wait(20)
        yield from ()

    started = time.monotonic()
    with grpc.insecure_channel(srv.target) as ch:
        with pytest.raises(grpc.RpcError) as info:
            list(enhancer_pb2_grpc.EnhancerStub(ch).StreamEnhance(nothing(), metadata=(("authorization", key),),
                                                                   timeout=30))
        stop.set()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and _trailer(info.value) == "REQUEST_TIMEOUT"
    assert 9 < time.monotonic() - started < 20


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


SLOW_CONSUMER_S = 2.0   # the server's setting in the test below
FLUSH_S = 5.0           # how long the server lets the status wait behind unread data (a constant)
METADATA = "authorization"


async def _never_reading_stream(channel: grpc.aio.Channel, key: str, opened: asyncio.Event
                                ) -> tuple[grpc.StatusCode, float]:
    """A call that sends a config and audio as fast as grpc takes it, and never reads a response.
    Returns the call's final code as the client sees it, and how long after its last write the end came."""
    last_write = time.monotonic()
    call = enhancer_pb2_grpc.EnhancerStub(channel).StreamEnhance(metadata=((METADATA, key),))

    async def flood() -> None:
        nonlocal last_write
        with contextlib.suppress(Exception):   # the writes fail once the call has ended
            await call.write(_config())
            opened.set()
            while True:
                await call.write(_audio(1.0))
                last_write = time.monotonic()

    writer = asyncio.create_task(flood())
    try:
        code = await asyncio.wait_for(call.code(), 60)   # the status alone: no message is read
    finally:
        writer.cancel()
    return code, time.monotonic() - last_write


class _GoodCall:
    """Another user's well-behaved stream on the same connection: 0.1 s of audio every 0.1 s, every
    response read. Notes when each response came."""

    def __init__(self, channel: grpc.aio.Channel, key: str) -> None:
        self.call = enhancer_pb2_grpc.EnhancerStub(channel).StreamEnhance(metadata=((METADATA, key),))
        self.replies: list[float] = []
        self.audio_bytes = 0
        self.delay = 0
        self.sent = 0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        async def write() -> None:
            await self.call.write(_config())
            while not self.stop.is_set():
                await self.call.write(_audio(0.1))
                self.sent += 1
                await asyncio.sleep(0.1)
            await self.call.done_writing()

        writer = asyncio.create_task(write())
        async for resp in self.call:
            self.replies.append(time.monotonic())
            self.audio_bytes += len(resp.audio)
            self.delay = self.delay or resp.algorithmic_delay_samples
        await writer

    def longest_gap(self, since: float) -> float:
        times = [since] + [t for t in self.replies if t > since]
        return max(b - a for a, b in zip(times, times[1:], strict=False)) if len(times) > 1 else math.inf


@pytest.mark.slow
def test_clients_that_never_read_are_reset_alone_on_a_shared_connection(tmp_path: Path) -> None:
    """Issue #18: SLOW_CONSUMER queues behind the unread responses, so a client that never reads would
    never receive it, and each such stream kept 5-7 MiB for as long as its connection lived. Here one
    connection (one channel, through a proxy that notes the frames) carries n never-reading calls of one
    user and a well-behaved call of another, as the gateway's channel does. The server resets each stuck
    call alone, FLUSH_S after its SLOW_CONSUMER status: on the wire, the status in a HEADERS frame, then
    RST_STREAM on that stream; every bad client sees its call end without reading; the gauge comes back;
    a second round does not grow the server's memory again; and the good call flows throughout."""
    n = 6
    bad_key = create_key(tmp_path, "--name", "hostile")
    good_key = create_key(tmp_path, "--name", "honest")
    port = free_port()
    srv = start_server(tmp_path, "--metrics-port", str(port), "--slow-consumer-seconds", str(SLOW_CONSUMER_S),
                       "--max-streams-per-user", str(n))

    async def rounds(target: str) -> tuple[list[list[tuple[grpc.StatusCode, float]]], list[float], _GoodCall,
                                           list[float]]:
        ends, after, round_starts = [], [], []

        async def sample() -> None:
            while True:
                peak.append(max(peak[-1], _rss_mib(srv.proc.pid)))
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample())
        async with grpc.aio.insecure_channel(target) as channel:   # one channel: one connection
            good = _GoodCall(channel, good_key)
            good_task = asyncio.create_task(good.run())
            while not good.replies:
                await asyncio.sleep(0.05)
            for _ in range(2):
                round_starts.append(time.monotonic())
                opened = [asyncio.Event() for _ in range(n)]
                tasks = [asyncio.create_task(_never_reading_stream(channel, bad_key, ev)) for ev in opened]
                await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in opened)), 30)
                ends.append(await asyncio.gather(*tasks))
                await asyncio.to_thread(_wait_gauge, port, "hushwire_streams_open", 1)   # the good call's
                await asyncio.sleep(1.0)
                after.append(_rss_mib(srv.proc.pid))
            good.stop.set()
            await asyncio.wait_for(good_task, 30)
        sampler.cancel()
        return ends, after, good, round_starts

    try:
        with H2Proxy(srv.target, tmp_path / "frames.jsonl") as proxy:
            before = _rss_mib(srv.proc.pid)
            peak = [before]
            ends, after, good, round_starts = asyncio.run(rounds(proxy.target))
            frames = list(proxy.frames)
        print(f"server RSS, {n} never-reading calls per round: before {before:.0f} MiB, peak {peak[-1]:.0f}, "
              f"after each round {after[0]:.0f}, {after[1]:.0f}")
        for round_ends in ends:   # every bad client saw its call end without reading
            assert all(code != grpc.StatusCode.OK for code, _ in round_ends), round_ends
        # On the wire: one connection; each bad stream got its status first (a HEADERS frame that ends the
        # stream, with grpc-status RESOURCE_EXHAUSTED and the code in the message), then RST_STREAM, within
        # the slow-consumer time plus the flush time after the last response data the window let through
        # (the status waits the flush time at least; a margin for a loaded machine).
        assert {f.conn for f in frames} == {0}
        opened_streams = [f.stream_id for f in frames if f.to_server and f.kind == "HeadersFrame"]
        good_stream, bad_streams = opened_streams[0], opened_streams[1:]
        assert len(bad_streams) == 2 * n
        for sid in bad_streams:
            from_server = [f for f in frames if not f.to_server and f.stream_id == sid]
            status = [f for f in from_server if f.kind == "HeadersFrame" and "END_STREAM" in f.flags]
            resets = [f for f in from_server if f.kind == "RstStreamFrame"]
            assert len(status) == 1 and len(resets) == 1, [(f.kind, f.flags) for f in from_server]
            assert status[0].headers["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
            assert status[0].headers["grpc-message"].startswith("SLOW_CONSUMER"), status[0].headers
            assert status[0].at <= resets[0].at
            stuck_for = resets[0].at - resets[0].last_data_at
            assert FLUSH_S - 0.5 < stuck_for < SLOW_CONSUMER_S + FLUSH_S + 2, stuck_for
        assert not [f for f in frames if f.stream_id == good_stream and f.kind == "RstStreamFrame"]
        assert not [f for f in frames if f.kind == "GoAwayFrame"]
        # The good call was never held up: a reply at least every 2 s from the first round on (one per
        # 0.1 s is sent), and all its audio back, the tail included.
        assert good.longest_gap(round_starts[0]) < 2.0, good.longest_gap(round_starts[0])
        assert good.audio_bytes == (good.sent * 1600 + good.delay) * 4
        # The first round leaves what the allocator and the denoiser's pool keep for reuse. A stuck stream
        # that is not freed holds 5-7 MiB (issue #18), so a second round of n would add at least 5n MiB;
        # the bound is half of that (a fixed 10 MiB failed once at 16 MiB in a full CI run, allocator noise).
        assert after[1] < after[0] + 2.5 * n, (before, after)
        # While stuck, a stream holds at most its 1 MiB HTTP/2 window of unread requests and its session;
        # with grpc's own growing window, the same 6 streams peaked 50-220 MiB above the start.
        assert peak[-1] < before + 8 * n, (before, peak[-1])
        assert srv.log.count("reset='stream'") == 2 * n, srv.log
        _wait_gauge(port, "hushwire_streams_open", 0)
    finally:
        assert srv.stop() == 0


IDLE_S = 2.0   # --stream-idle-seconds of the server below


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, int]]:
    data = tmp_path_factory.mktemp("idle")
    port = free_port()
    key = create_key(data)
    srv = start_server(data, "--metrics-port", str(port), "--stream-idle-seconds", str(IDLE_S))
    yield srv, key, port
    assert srv.stop() == 0


def _timed(requests: list[tuple[float, enhancer_pb2.StreamEnhanceRequest]], then_wait: float,
           last: list[float]) -> Iterator[enhancer_pb2.StreamEnhanceRequest]:
    """Each request after its delay (s); then silence for ``then_wait`` s. ``last[0]``: when the last went."""
    for delay, req in requests:
        time.sleep(delay)
        last[0] = time.monotonic()
        yield req
    time.sleep(then_wait)


def test_idle_stream_is_ended_with_request_timeout(idle_server: tuple[ServerProcess, str, int]) -> None:
    """Issue #18: a stream that sends a config and one chunk and then goes quiet no longer holds its
    slot until the client disconnects."""
    srv, key, port = idle_server
    last = [time.monotonic()]
    with grpc.insecure_channel(srv.target) as ch:
        call = enhancer_pb2_grpc.EnhancerStub(ch).StreamEnhance(
            _timed([(0, _config()), (0, _audio(0.1))], 20, last), metadata=(("authorization", key),), timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        ended = time.monotonic() - last[0]
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and _trailer(info.value) == "REQUEST_TIMEOUT"
    assert "no audio or update for 2 s" in (info.value.details() or "")
    assert IDLE_S - 0.2 < ended < IDLE_S + 3, ended
    _wait_gauge(port, "hushwire_streams_open", 0)


def test_updates_keep_a_stream_alive(idle_server: tuple[ServerProcess, str, int]) -> None:
    """An Update is activity: a stream that only sends updates (a muted microphone that changes its
    settings) for twice the idle time is not ended, and finishes normally when the client half-closes."""
    srv, key, _ = idle_server
    update = enhancer_pb2.StreamEnhanceRequest(update=enhancer_pb2.StreamUpdate(attenuation_limit_db=6))
    plan = [(0.0, _config()), (0.0, _audio(0.1))] + [(IDLE_S / 2, update)] * 4 + [(0.0, _audio(0.1))]
    started = time.monotonic()
    with grpc.insecure_channel(srv.target) as ch:
        resps = list(enhancer_pb2_grpc.EnhancerStub(ch).StreamEnhance(
            _timed(plan, 0, [0.0]), metadata=(("authorization", key),), timeout=30))
    assert time.monotonic() - started > 2 * IDLE_S
    assert len(resps) == 4   # the delay, one per audio chunk, the flushed tail
    assert sum(len(r.audio) for r in resps) == 2 * 1600 * 4 + 4 * resps[0].algorithmic_delay_samples


def test_client_keepalive_matches_what_the_server_allows() -> None:
    """Clients ping at the keepalive interval; the server must accept that (a client pinging more often
    than the server's minimum gets GOAWAY too_many_pings after two strikes) and ping at least as often
    itself, with a timeout that finds a dead peer well before the idle or slow-consumer clocks would."""
    from client.channel import channel_options
    from hushwire.contract.keepalive import SERVER_OPTIONS

    client = dict(channel_options([("grpc.max_reconnect_backoff_ms", 3000)]))
    server = dict(SERVER_OPTIONS)
    assert client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"]
    assert client["grpc.http2.max_pings_without_data"] == 0 == server["grpc.http2.max_pings_without_data"]
    assert server["grpc.keepalive_time_ms"] + server["grpc.keepalive_timeout_ms"] <= 60_000
    assert client["grpc.max_reconnect_backoff_ms"] == 3000


def _open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@pytest.mark.slow
def test_a_download_that_is_never_read_is_reset_and_its_blob_closed(tmp_path: Path) -> None:
    """A DownloadResult whose client takes the first message and then nothing more (its window kept
    small, so the server's writes wait at once) held the open result blob, and the call, for as long as
    the client lived. Now it is ended like a stream: SLOW_CONSUMER after --download-idle-seconds, the
    blob closed at once, the stream reset FLUSH_S later; the client that reads again gets what was
    delivered and then that status."""
    import soundfile as sf

    from client import JobsClient
    from hushwire.v1 import jobs_pb2, jobs_pb2_grpc

    key = create_key(tmp_path)
    srv = start_server(tmp_path, "--download-idle-seconds", str(SLOW_CONSUMER_S))
    try:
        audio = tmp_path / "long.wav"
        sf.write(str(audio), np.zeros((16000 * 60, 1), np.float32), 16000, subtype="PCM_16")   # 1.9 MB result
        with JobsClient(srv.target, key) as jobs:
            job = jobs.wait(jobs.submit(audio).job_id, timeout=120)
        assert job.status == jobs_pb2.JOB_STATUS_COMPLETED

        async def stalled_download() -> tuple[grpc.StatusCode, str, int, float]:
            small_window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65536)]
            async with grpc.aio.insecure_channel(srv.target, options=small_window) as ch:
                call = jobs_pb2_grpc.JobsStub(ch).DownloadResult(
                    jobs_pb2.DownloadResultRequest(job_id=job.job_id), metadata=((METADATA, key),))
                first = await call.read()
                assert first.WhichOneof("msg") == "info"
                stalled = time.monotonic()
                fds_held = _open_fds(srv.proc.pid)
                while "download reset" not in srv.log:
                    assert time.monotonic() - stalled < SLOW_CONSUMER_S + FLUSH_S + 5, "no reset"
                    await asyncio.sleep(0.1)
                reset_after = time.monotonic() - stalled
                assert _open_fds(srv.proc.pid) < fds_held   # the result blob was closed
                received = 0
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    while (msg := await call.read()) is not grpc.aio.EOF:
                        received += len(msg.chunk)
                return info.value.code(), info.value.details() or "", received, reset_after

        code, details, received, reset_after = asyncio.run(stalled_download())
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith("SLOW_CONSUMER"), (code, details)
        assert received < 16000 * 60 * 2   # it stopped short of the whole result
        assert SLOW_CONSUMER_S + FLUSH_S - 1 < reset_after < SLOW_CONSUMER_S + FLUSH_S + 5, reset_after
        assert "reset='stream'" in srv.log
    finally:
        assert srv.stop() == 0
