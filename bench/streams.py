"""Live streams per server core: the knee of hushwire and of a bare grpc.aio echo server.

A stream is 16 kHz mono PCM16 in 20 ms chunks paced at real time. The added latency of a chunk
is the time its response arrives minus the chunk's input time (when the load generator hands it
to grpc); the server answers every audio request with exactly one response, so requests and
responses pair up in order. How late the load generator sent chunks against their schedule is
reported separately (send lag). A level of N concurrent
streams passes when the p99 added latency is at most ``--p99-ms`` (10 ms) and no chunk is
dropped (every chunk answered, no stream ended with an error). The knee is the largest passing N.

The search is bounded: the levels in ``--levels`` in order until one fails, then ``--bisect``
bisection steps between the last pass and the first failure, each level ``--seconds`` long
after ``--warmup`` seconds that are not measured. hushwire and the echo server are searched in
the same run with the same load generator (this process, pinned to ``--client-cpu``); each
server is pinned to ``--server-cpu``. The load generator's own CPU use is printed for every
level: near 100 % the client, not the server, is the bottleneck. A level that fails while the
load generator itself sent late (send-lag p99 over the latency target: something else held its
core) is measured once more. ``--rounds R`` repeats both
searches, alternating the servers, and the summary takes medians.

Other work on the server's core delays it by whole scheduler time slices, which moves the knee a
lot. The server's CPU time per stream barely moves, so the summary also gives the CPU-bound
capacity: N / (server CPU share) at the largest passing level, the streams one core could carry
if CPU were the only limit.

    python -m bench.streams                 # full search (a few minutes)
    python -m bench.streams --quick         # tiny sizes, a smoke test
    python -m bench.streams --profile-streams 60 --profile-out /tmp/server.txt   # plus a py-spy profile
    python -m bench.streams --baseline main --levels 20,40,60 --bisect 0 --rounds 3 --p99-ms 1000

``--baseline REF`` also searches ``hushwire serve`` of git commit REF (checked out in a temporary
worktree), alternating with this tree's server round by round, and prints, besides each one's split
against the echo, this tree's CPU per stream-second outside the denoiser over the baseline's: the
before/after figure to quote on a shared machine, where absolute figures drift with the load.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import math
import random
import re
import statistics
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench._common import (
    ROOT,
    BenchTimeout,
    Child,
    Children,
    baseline_tree,
    cpu_seconds,
    create_key,
    free_port,
    install_watchdog,
    percentile,
    pin_self,
    print_header,
    print_profile,
    print_table,
    py_spy_record,
    sched_seconds,
    start_hushwire,
    stopped,
    temp_dir,
    test_audio,
    usable_cpus,
)
from hushwire.contract import pcm
from hushwire.v1 import enhancer_pb2

METHOD = "/hushwire.v1.Enhancer/StreamEnhance"
RATE_HZ = 16000
CHUNK_MS = 20.0
CHANNEL_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    # Separate TCP connections per channel (grpc shares one subchannel between equal channels otherwise).
    ("grpc.use_local_subchannel_pool", 1),
]
DEFAULT_LEVELS = (10, 20, 40, 80, 120, 160, 240, 320)
ANSWER_TIMEOUT_S = 5.0  # after the half-close, the time every stream gets to receive its last responses


# -- requests ---------------------------------------------------------------------------------------------


def config_request(rate: int = RATE_HZ) -> bytes:
    cfg = enhancer_pb2.StreamConfig(sample_rate_hz=rate, channels=1, encoding=enhancer_pb2.SAMPLE_ENCODING_PCM16)
    return enhancer_pb2.StreamEnhanceRequest(config=cfg).SerializeToString()


def audio_requests(seconds: float, chunk_ms: float = CHUNK_MS, rate: int = RATE_HZ) -> list[bytes]:
    """Serialized audio requests, made once: the load generator then only moves bytes."""
    audio = test_audio(seconds, rate)
    data = pcm.encode(audio[:, None], pcm.PCM16)
    step = int(rate * chunk_ms / 1000) * 2
    return [enhancer_pb2.StreamEnhanceRequest(audio=data[i : i + step]).SerializeToString()
            for i in range(0, len(data) - step + 1, step)]


def open_channels(target: str, n: int) -> list[grpc.aio.Channel]:
    return [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(n)]


async def open_stream(channel: grpc.aio.Channel, key: str | None, config: bytes, retry_s: float = 0.0,
                      refused: list[int] | None = None) -> grpc.aio.StreamStreamCall:
    """Start a stream with raw bytes in and out (no (de)serialization in the load generator). Within
    ``retry_s``, a stream refused with OVERLOADED (admission control) is opened again after a jittered
    pause, as the client library does; each such refusal counts one in ``refused[0]``."""
    metadata = (("authorization", key),) if key else None
    loop = asyncio.get_running_loop()
    give_up = loop.time() + retry_s
    while True:
        call = channel.stream_stream(METHOD)(metadata=metadata)
        await call.write(config)
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as err:
            code = dict(err.trailing_metadata() or ()).get("hushwire-error-code")
            if code != "OVERLOADED" or loop.time() >= give_up:
                raise
            if refused is not None:
                refused[0] += 1
            await asyncio.sleep(random.uniform(0.05, 0.2))
            continue
        if first is grpc.aio.EOF:
            raise RuntimeError("the server ended the stream before answering the config")
        return call


# -- one level ---------------------------------------------------------------------------------------------


@dataclass
class Level:
    streams: int
    seconds: float
    sent: int = 0
    answered: int = 0
    dropped: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies_s: list[float] = field(default_factory=list)
    stream_max_s: list[float] = field(default_factory=list)  # each answered stream's worst added latency
    lags_s: list[float] = field(default_factory=list)
    client_cpu: float = 0.0  # share of one core over the measured window
    server_got: float = math.nan  # share of the CPU the server asked for that it got (schedstat), measured window
    retried: int = 0  # opens refused with OVERLOADED and tried again (run_level's admit_within_s)
    server_cpu: float = 0.0
    server_cpus: list[float] = field(default_factory=list)  # per process, with ``server_pids``
    batch_mean: float | None = None  # stream chunks per denoiser batch (hushwire's metrics), measured window
    denoiser_cpu: float | None = None  # share of one core the batched denoiser used (hushwire's metrics)

    passed_flag: bool = False  # set by the search with its p99 target

    def passed(self, p99_ms: float) -> bool:
        return self.dropped == 0 and not self.errors and self.p(99) <= p99_ms

    def p(self, q: float) -> float:
        return 1000.0 * percentile(self.latencies_s, q)

    def row(self, label: str, p99_ms: float) -> list[object]:
        errs = ", ".join(f"{k}×{v}" for k, v in self.errors.items()) or "0"
        return [label, self.streams, self.sent, round(self.p(50), 2), round(self.p(99), 2),
                round(1000 * max(self.latencies_s, default=float("nan")), 1), self.dropped, errs,
                round(1000 * percentile(self.lags_s, 99), 2), f"{100 * self.server_cpu:.0f} %",
                "–" if self.denoiser_cpu is None else f"{100 * self.denoiser_cpu:.1f} %",
                f"{100 * self.client_cpu:.0f} %", "–" if self.batch_mean is None else f"{self.batch_mean:.1f}",
                "pass" if self.passed(p99_ms) else "FAIL"]

    def cpu_ms(self) -> float:
        """Server CPU ms per stream-second."""
        return 1000 * self.server_cpu / self.streams

    def around_ms(self) -> float:
        """Server CPU ms per stream-second outside the batched denoiser (all of it for the echo)."""
        return 1000 * (self.server_cpu - (self.denoiser_cpu or 0.0)) / self.streams


LEVEL_HEADERS = ["server", "streams", "chunks", "p50 ms", "p99 ms", "max ms", "dropped", "errors",
                 "client send lag p99 ms", "server CPU", "denoiser CPU", "load-gen CPU", "chunks per batch",
                 "≤ target"]
# The load generator's CPU share from which its own core, not the server, may be what limits a level.
CLIENT_SATURATED = 0.9


def batch_counts(metrics_port: int | None) -> tuple[float, float, float] | None:
    """(chunks, batches, denoiser CPU seconds) so far, from hushwire's /metrics; None without a metrics port."""
    if metrics_port is None:
        return None
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    values = {m.group(1): float(m.group(2)) for m in re.finditer(
        r"^hushwire_(stream_batch_chunks_sum|stream_batch_chunks_count|stream_denoiser_cpu_seconds_total) (\S+)$",
        text, re.MULTILINE)}
    return (values.get("stream_batch_chunks_sum", 0.0), values.get("stream_batch_chunks_count", 0.0),
            values.get("stream_denoiser_cpu_seconds_total", 0.0))


async def run_level(target: str, key: str | None, streams: int, seconds: float, warmup: float, server_pid: int,
                    requests: Sequence[bytes], streams_per_channel: int = 1, metrics_port: int | None = None,
                    server_pids: Sequence[int] = (), admit_within_s: float = 0.0) -> Level:
    """Drive ``streams`` real-time streams for ``warmup + seconds``; measure the last ``seconds``.
    ``server_pids``: the server's processes (``serve --processes``), measured each; their sum is the
    server's CPU (``server_pid`` is then not measured). ``admit_within_s``: a stream refused with
    OVERLOADED is opened again for up to this long (a server with admission control on ramps up a
    burst over its slow-start windows), before the level's clock starts."""
    pids = list(server_pids) or [server_pid]
    level = Level(streams, seconds)
    period = CHUNK_MS / 1000.0
    config = config_request()
    channels = open_channels(target, math.ceil(streams / streams_per_channel))
    try:
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), 10.0)
        retried = [0]
        calls = await asyncio.gather(*(open_stream(channels[k // streams_per_channel], key, config,
                                                   admit_within_s, retried)
                                       for k in range(streams)), return_exceptions=True)
        level.retried = retried[0]
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.1
        measure_from = t0 + warmup
        n_chunks = int(round((warmup + seconds) / period))

        async def drive(k: int, call: grpc.aio.StreamStreamCall | BaseException) -> None:
            if isinstance(call, BaseException):
                level.errors[type(call).__name__] += 1
                return
            phase = period * k / streams  # spread the streams' chunk times evenly over a period
            offset = (k * 37) % len(requests)
            pending: collections.deque[float] = collections.deque()
            answered = 0

            worst = 0.0

            async def reader() -> None:
                nonlocal answered, worst
                while (resp := await call.read()) is not grpc.aio.EOF:
                    now = loop.time()
                    if pending:
                        sent_at = pending.popleft()
                        answered += 1
                        if sent_at >= 0:
                            level.latencies_s.append(now - sent_at)
                            worst = max(worst, now - sent_at)
                    del resp

            read_task = asyncio.create_task(reader())
            sent = 0
            try:
                for i in range(n_chunks):
                    due = t0 + phase + i * period
                    wait = due - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    sent_at = loop.time()
                    if due >= measure_from:
                        level.lags_s.append(sent_at - due)
                    # The input time is when the chunk is handed to grpc: a load generator that runs
                    # late (its own core is shared too) shows in the send-lag column, not here.
                    pending.append(sent_at if due >= measure_from else -1.0)
                    await call.write(requests[(offset + i) % len(requests)])
                    sent += 1
                    if read_task.done():
                        break
                await call.done_writing()
                await asyncio.wait_for(read_task, ANSWER_TIMEOUT_S)
            except grpc.aio.AioRpcError as err:
                level.errors[err.code().name] += 1
            except TimeoutError:
                level.errors["no answer"] += 1
            except asyncio.InvalidStateError:
                level.errors["stream ended early"] += 1
            finally:
                if not read_task.done():
                    read_task.cancel()
                    call.cancel()
                    await asyncio.gather(read_task, return_exceptions=True)
                elif not read_task.cancelled() and read_task.exception() is not None:
                    exc = read_task.exception()
                    name = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
                    level.errors[name] += 1
            level.sent += sent
            level.answered += answered
            level.stream_max_s.append(worst)
            level.dropped += sent - answered

        async def meter() -> None:
            await asyncio.sleep(max(0.0, measure_from - loop.time()))
            c0, s0, w0 = time.process_time(), [cpu_seconds(p) for p in pids], loop.time()
            q0 = [sched_seconds(p) for p in pids]
            b0 = await asyncio.to_thread(batch_counts, metrics_port)
            await asyncio.sleep(max(0.0, measure_from + seconds - loop.time()))
            c1, s1, w1 = time.process_time(), [cpu_seconds(p) for p in pids], loop.time()
            q1 = [sched_seconds(p) for p in pids]
            b1 = await asyncio.to_thread(batch_counts, metrics_port)
            run = sum(b[0] - a[0] for a, b in zip(q0, q1, strict=True))
            wait = sum(b[1] - a[1] for a, b in zip(q0, q1, strict=True))
            level.server_got = run / (run + wait) if run > 0 else math.nan
            level.client_cpu = (c1 - c0) / (w1 - w0)
            level.server_cpus = [(b - a) / (w1 - w0) for a, b in zip(s0, s1, strict=True)]
            level.server_cpu = sum(level.server_cpus)
            if b0 is not None and b1 is not None and b1[1] > b0[1]:
                level.batch_mean = (b1[0] - b0[0]) / (b1[1] - b0[1])
            if b0 is not None and b1 is not None:
                level.denoiser_cpu = (b1[2] - b0[2]) / (w1 - w0)

        await asyncio.gather(meter(), *(drive(k, c) for k, c in enumerate(calls)))
    finally:
        for ch in channels:
            await ch.close()
    return level


# -- the knee -------------------------------------------------------------------------------------------


@dataclass
class Search:
    label: str
    levels: list[Level] = field(default_factory=list)
    knee: int = 0
    first_fail: int | None = None
    budget_ran_out: bool = False
    round: int = 1


async def find_knee(label: str, target: str, key: str | None, server_pid: int, args: argparse.Namespace,
                    requests: Sequence[bytes], deadline: float, metrics_port: int | None = None) -> Search:
    search = Search(label)
    level_cost = args.warmup + args.seconds + ANSWER_TIMEOUT_S

    async def measure(n: int, retry: bool = True) -> bool:
        level = await run_level(target, key, n, args.seconds, args.warmup, server_pid, requests,
                                args.streams_per_channel, metrics_port)
        search.levels.append(level)
        ok = level.passed_flag = level.passed(args.p99_ms)
        print("  " + " | ".join(str(c) for c in level.row(label, args.p99_ms)), flush=True)
        await asyncio.sleep(1.0)  # let the server close the streams before the next level
        late = 1000 * percentile(level.lags_s, 99) > args.p99_ms
        if not ok and late and retry and time.monotonic() + level_cost < deadline:
            # The load generator itself was held up (its core is shared): not the server's failure.
            print(f"  (load generator sent late at {n} streams: measuring this level once more)", flush=True)
            return await measure(n, retry=False)
        return ok

    for n in args.levels:
        if time.monotonic() + level_cost > deadline:
            search.budget_ran_out = True
            break
        if await measure(n):
            search.knee = n
        else:
            search.first_fail = n
            break
    for _ in range(args.bisect):
        if search.first_fail is None or search.first_fail - search.knee <= max(2, search.knee // 10):
            break
        if time.monotonic() + level_cost > deadline:
            search.budget_ran_out = True
            break
        mid = (search.knee + search.first_fail) // 2
        if await measure(mid):
            search.knee = mid
        else:
            search.first_fail = mid
    return search


def knee_text(s: Search) -> str:
    if s.first_fail is None:
        return f"≥ {s.knee}" + (" (budget)" if s.budget_ran_out else " (every level passed)")
    return str(s.knee)


async def profile_server(target: str, key: str | None, pid: int, streams: int, seconds: float, out: Path,
                         requests: Sequence[bytes], native: bool) -> Level:
    spy = py_spy_record(pid, out, seconds, native=native)
    try:
        level = await run_level(target, key, streams, seconds, 1.0, pid, requests)
    finally:
        try:
            _, err = await asyncio.to_thread(spy.communicate, timeout=seconds + 30)
        except Exception:
            spy.kill()
            raise
    if spy.returncode != 0:
        print(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}", file=sys.stderr)
    return level


# -- main ----------------------------------------------------------------------------------------------


def _capacity(s: Search) -> float:
    """Streams one server core could carry if CPU were the only limit: N / CPU share at the largest
    passing level (or the smallest level when none passed). Robust against latency noise from other
    work on the core, which moves the knee far more than the CPU cost per stream."""
    passed = [lv for lv in s.levels if lv.streams <= s.knee] or s.levels
    lv = max(passed, key=lambda v: v.streams) if s.knee else min(passed, key=lambda v: v.streams)
    return lv.streams / lv.server_cpu if lv.server_cpu > 0 else float("nan")


def _cpu_per_stream_ms(s: Search) -> float:
    """Server CPU ms per second of one stream, median over the passing levels (all if none passed)."""
    levels = [lv for lv in s.levels if lv.passed_flag] or s.levels
    return float(statistics.median(lv.cpu_ms() for lv in levels)) if levels else float("nan")


# A level's CPU per stream-second says what a stream costs only below saturation: at a full core, queues
# grow, batches swell and the cost per chunk falls.
SPLIT_MAX_CPU = 0.9


def _paired(hw: Search, echo: Search) -> list[tuple[Level, Level]]:
    """hushwire's and the echo's levels of the same size in one round where both answered every chunk and
    hushwire's core was below SPLIT_MAX_CPU (a latency failure from other work on a shared core still
    measures the CPU); the last measurement of each size."""
    last = {lv.streams: lv for lv in echo.levels}
    pairs = {a.streams: (a, last[a.streams]) for a in hw.levels if a.streams in last}
    return [(a, b) for a, b in pairs.values() if a.server_cpu < SPLIT_MAX_CPU and not a.dropped and not a.errors
            and not b.dropped and not b.errors]


def _split(hw: Search, echo: Search) -> list[object] | None:
    """One round's CPU split at the levels both servers measured (``_paired``), medians over them, ms per
    stream-second: hushwire in all, its batched denoiser, the servicer around it (hushwire less the
    denoiser less the echo's cost for the same messages), gRPC (the echo's); and the ratio of
    hushwire's CPU outside the denoiser to the echo's (issue #17: at most 1.25)."""
    pairs = _paired(hw, echo)
    if not pairs or any(a.denoiser_cpu is None for a, _ in pairs):
        return None

    def med(values: list[float]) -> float:
        return round(float(statistics.median(values)), 2)

    return [hw.round, hw.label, ",".join(str(a.streams) for a, _ in pairs), med([a.cpu_ms() for a, _ in pairs]),
            med([a.cpu_ms() - a.around_ms() for a, _ in pairs]), med([a.around_ms() - b.cpu_ms() for a, b in pairs]),
            med([b.cpu_ms() for _, b in pairs]), med([a.around_ms() / b.cpu_ms() for a, b in pairs])]


SPLIT_HEADERS = ["round", "server", "levels (streams)", "hushwire", "denoiser", "servicer", "gRPC (echo)",
                 "(hushwire − denoiser) / echo"]
# A hushwire server's label (this tree's, or the --baseline commit's) in the searches.
HUSHWIRES = ("hushwire", "baseline")


def _around_vs(hw: Search, base: Search) -> float | None:
    """One round's ``this tree / baseline`` ratio of the CPU per stream-second outside the denoiser, median
    over the levels both measured with every chunk answered below SPLIT_MAX_CPU (as ``_paired``)."""
    pairs = _paired(hw, base)
    pairs = [(a, b) for a, b in pairs if b.server_cpu < SPLIT_MAX_CPU]
    if not pairs or any(a.denoiser_cpu is None or b.denoiser_cpu is None for a, b in pairs):
        return None
    return float(statistics.median(a.around_ms() / b.around_ms() for a, b in pairs))


async def _start_servers(args: argparse.Namespace, children: Children, tmp: Path, server_cpu: int | None,
                         labels: list[str], base_tree: Path | None) -> dict[str, tuple[Child, str | None, int | None]]:
    """label -> (server, its API key, its metrics port)."""
    servers: dict[str, tuple[Child, str | None, int | None]] = {}
    for label in labels:
        if label in HUSHWIRES:
            data = tmp / label
            tree = base_tree if label == "baseline" and base_tree is not None else ROOT
            metrics_port = free_port()
            # Admission control off: the search offers more than the knee on purpose.
            srv = start_hushwire(children, data, "--max-streams-per-user", "100000", "--live-cpu-budget", "0",
                                 "--metrics-port", str(metrics_port), cpu=server_cpu, tree=tree)
            servers[label] = (srv, create_key(data, tree), metrics_port)
        else:
            srv = children.start("echo", [sys.executable, "-m", "bench.echo", "--port", "0"],
                                 tmp / "echo.log", server_cpu)
            servers[label] = (srv, None, None)
    return servers


async def _main(args: argparse.Namespace, server_cpu: int | None) -> int:
    # Leave room for start-up, the summary and clean-up inside the hard bound (the watchdog).
    deadline = time.monotonic() + args.max_seconds - min(30.0, 0.2 * args.max_seconds)
    requests = audio_requests(min(30.0, args.warmup + args.seconds + 1))
    searches: list[Search] = []
    with Children() as children, temp_dir() as tmp, contextlib.ExitStack() as trees:
        labels = ["hushwire", "echo"] if not args.only else [args.only]
        base_tree = None
        if args.baseline is not None:
            base_tree, commit = trees.enter_context(baseline_tree(args.baseline, tmp))
            labels.insert(1, "baseline")
            print(f"baseline: hushwire serve of {args.baseline} ({commit}), searched like this tree's")
        servers = await _start_servers(args, children, tmp, server_cpu, labels, base_tree)
        print("\nper level (as measured):")
        print("  " + " | ".join(LEVEL_HEADERS), flush=True)
        # Rounds alternate the servers, so slow drifts in what else runs on the machine hit both; with a
        # baseline, this tree's server and the baseline's swap places every other round.
        order: list[tuple[int, str]] = []
        for r in range(args.rounds):
            ordered = list(labels)
            if r % 2 and "baseline" in ordered:
                ordered[0], ordered[1] = ordered[1], ordered[0]
            order += [(r, label) for label in ordered]
        for i, (r, label) in enumerate(order):
            srv, key, metrics_port = servers[label]
            share = time.monotonic() + (deadline - time.monotonic()) / (len(order) - i)
            search = await find_knee(label, srv.target, key, srv.pid, args, requests, share, metrics_port)
            search.round = r + 1
            searches.append(search)
        _summary(args, labels, searches)
        if args.profile_streams and args.profile_server in servers:
            srv, key, _ = servers[args.profile_server]
            out = Path(args.profile_out)
            print(f"\nprofiling {args.profile_server} at {args.profile_streams} streams for "
                  f"{args.profile_seconds:g} s → {out}")
            level = await profile_server(srv.target, key, srv.pid, args.profile_streams, args.profile_seconds,
                                         out, requests, args.native)
            print("  " + " | ".join(str(c) for c in level.row(f"{args.profile_server}+py-spy", args.p99_ms)))
            print_profile(out, f"{args.profile_server} under {args.profile_streams} streams")
    return 0


def _summary(args: argparse.Namespace, labels: list[str], searches: list[Search]) -> None:
    print("\nlevels measured:")
    print_table(["round", *LEVEL_HEADERS],
                [[s.round, *lv.row(s.label, args.p99_ms)] for s in searches for lv in s.levels])
    summary = []
    for s in searches:
        at = next((lv for lv in s.levels if lv.streams == s.knee), None)
        summary.append([s.round, s.label, knee_text(s), s.first_fail if s.first_fail is not None else "–",
                        round(at.p(50), 2) if at else "–", round(at.p(99), 2) if at else "–",
                        f"{100 * at.server_cpu:.0f} %" if at else "–",
                        f"{100 * at.client_cpu:.0f} %" if at else "–",
                        f"{100 * max((lv.client_cpu for lv in s.levels), default=0):.0f} %",
                        round(_cpu_per_stream_ms(s), 1), round(_capacity(s))])
    print(f"knees (p99 added latency ≤ {args.p99_ms:g} ms, nothing dropped; 16 kHz mono PCM16, "
          f"{CHUNK_MS:g} ms chunks at real time; server on one core):")
    print_table(["round", "server", "knee (streams)", "first failing level", "p50 ms at knee", "p99 ms at knee",
                 "server CPU at knee", "load-gen CPU at knee", "load-gen CPU max",
                 "server CPU ms per stream-second", "streams at 100 % CPU (est.)"], summary)
    by_label = {label: [s for s in searches if s.label == label] for label in labels}
    rounds = f" (medians of {args.rounds} rounds)" if args.rounds > 1 else ""
    hws = [label for label in labels if label in HUSHWIRES]
    if "echo" in labels and hws and not all(s.levels for s in searches):
        print("the time budget (--max-seconds) ran out before every server was measured")
    elif "echo" in labels and hws:
        echo_knee = statistics.median(s.knee for s in by_label["echo"])
        echo_cap = statistics.median(_capacity(s) for s in by_label["echo"])
        bound = (" (an upper bound: the echo knee is a lower bound)"
                 if any(s.first_fail is None for s in by_label["echo"]) else "")
        for label in hws:
            hw_knee = statistics.median(s.knee for s in by_label[label])
            hw_cap = statistics.median(_capacity(s) for s in by_label[label])
            ratio = hw_knee / echo_knee if echo_knee else float("nan")
            name = "hushwire" if label == "hushwire" else "baseline hushwire"
            print(f"{name} knee / echo knee{rounds} = {hw_knee:g} / {echo_knee:g} = {100 * ratio:.0f} %{bound}")
            print(f"CPU-bound capacity estimate{rounds}: {name} {hw_cap:.0f} / echo {echo_cap:.0f} streams = "
                  f"{100 * hw_cap / echo_cap:.0f} %")
            print(f"target {name} ≥ 60 % of echo: {'met' if ratio >= 0.6 else 'MISSED'}; "
                  f"stretch 100 streams per core: {'met' if hw_knee >= 100 else 'MISSED'}")
        splits = {label: [row for hw, echo in zip(by_label[label], by_label["echo"], strict=False)
                          if (row := _split(hw, echo)) is not None] for label in hws}
        if any(splits.values()):
            print(f"\nserver CPU ms per stream-second at the levels both servers ran with every chunk answered "
                  f"and hushwire under {100 * SPLIT_MAX_CPU:.0f} % of its core (medians over those levels; "
                  "servicer = hushwire − denoiser − echo):")
            print_table(SPLIT_HEADERS, sorted((row for rows in splits.values() for row in rows),
                                              key=lambda row: (row[0], row[1] != "hushwire")))
            for label, rows in splits.items():
                if rows:
                    around = statistics.median(float(row[-1]) for row in rows)  # type: ignore[arg-type]
                    name = "hushwire's" if label == "hushwire" else "the baseline's"
                    print(f"{name} CPU outside the denoiser / the echo's{rounds} = {around:.2f} "
                          f"(issue #17 target ≤ 1.25: {'met' if around <= 1.25 else 'MISSED'})")
    if "baseline" in labels and "hushwire" in labels:
        vs = [(hw.round, r) for hw, base in zip(by_label["hushwire"], by_label["baseline"], strict=False)
              if (r := _around_vs(hw, base)) is not None]
        if vs:
            print("this tree's CPU per stream-second outside the denoiser / the baseline's, per round: "
                  + ", ".join(f"{r:.2f}" for _, r in vs)
                  + f"; median {statistics.median(r for _, r in vs):.2f}")
    for s in searches:
        at20 = next((lv for lv in s.levels if lv.streams == 20), None)
        if at20 is not None and s.label in HUSHWIRES:
            print(f"round {s.round} {s.label}: p50 added latency at 20 streams {at20.p(50):.2f} ms")
        busy = next((lv for lv in sorted(s.levels, key=lambda v: v.streams)
                     if lv.client_cpu >= CLIENT_SATURATED), None)
        if busy is not None:
            print(f"round {s.round} {s.label}: the load generator used ≥ {100 * CLIENT_SATURATED:.0f} % of its "
                  f"core from {busy.streams} streams on ({100 * busy.client_cpu:.0f} % there)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: levels 2,4 of 2 s each")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=list(DEFAULT_LEVELS),
                        help="stream counts tried in order until one fails (default %(default)s)")
    parser.add_argument("--bisect", type=int, default=2, help="bisection steps after the first failure")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds at the start of a level")
    parser.add_argument("--p99-ms", type=float, default=10.0, help="p99 added latency a level must stay under")
    parser.add_argument("--streams-per-channel", type=int, default=1,
                        help="streams sharing one connection (default: one connection each, like real callers)")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--only", choices=["hushwire", "echo"], help="search one server only")
    parser.add_argument("--baseline", metavar="REF", default=None,
                        help="also search hushwire serve of git REF (a temporary worktree), alternating with "
                             "this tree's, and print this tree's CPU outside the denoiser over the baseline's")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat both searches, alternating the servers; the summary takes medians")
    parser.add_argument("--profile-streams", type=int, default=0,
                        help="after the search, profile hushwire serve with py-spy at this many streams")
    parser.add_argument("--profile-server", choices=["hushwire", "baseline", "echo"], default="hushwire",
                        help="which server --profile-streams profiles")
    parser.add_argument("--profile-seconds", type=float, default=15.0)
    parser.add_argument("--profile-out", default="server-profile.txt", help="py-spy collapsed stacks")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too; slower)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="hard bound on the whole run")
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.bisect, args.seconds, args.warmup = [2, 4], 0, 2.0, 0.5
        args.max_seconds = min(args.max_seconds, 120.0)
    install_watchdog(args.max_seconds)
    server_cpu, client_cpu = usable_cpus(args.server_cpu, args.client_cpu)
    pin_self(client_cpu)
    print_header("bench.streams", "Live streams per server core: hushwire vs a bare grpc.aio echo server")
    if server_cpu is None:
        print("note: fewer than two usable cores; nothing is pinned")
    else:
        print(f"server pinned to core {server_cpu}, load generator (this process) to core {client_cpu}")
    print(f"levels {args.levels}, {args.seconds:g} s each after {args.warmup:g} s warm-up, "
          f"up to {args.bisect} bisection steps; bound {args.max_seconds:g} s")
    try:
        return asyncio.run(_main(args, server_cpu))
    except (BenchTimeout, KeyboardInterrupt) as exc:
        return stopped(exc)


if __name__ == "__main__":
    sys.exit(main())
