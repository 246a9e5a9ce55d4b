"""The full-size soak (issue #9, item 5): live streams and REST uploads at once, and nothing lost.

A real ``hushwire serve`` (``--workers`` job workers) and a real ``hushwire gateway`` on loopback,
per-user limits raised for the run so that what is refused is refused by load, not by policy.
This process then drives, for ``--seconds`` of wall time:

- ``--streams`` live gRPC streams (``Enhancer.StreamEnhance``, raw stubs, one TCP connection each),
  16 kHz mono PCM16 in 20 ms chunks paced at real time, from a child process of their own (its own
  event loop and GIL: the upload clients' work must not make the streams send late). A stream that
  the server cannot keep up with sends late (each write is awaited, so gRPC flow control holds it
  back): the chunks it did send are counted. At the end of the window each stream half-closes and
  reads until the server ends it. Every chunk sent must be answered (one response per audio request,
  in order, which is how the latency pairs up) and the tail flushed: the output's frames must equal
  the input's plus the algorithmic delay.
- ``--uploads`` concurrent REST clients, each looping: ``POST /enhance`` with a real audio file
  (the evaluation set's noisy clips, every other one re-encoded as WAV; synthetic speech-like
  audio without the set), poll ``GET /stat/jobs/<id>`` every ``--poll-ms`` until the job is
  ``completed`` or ``failed``, then download the signed result URL and check its frames, rate and
  channels against the upload. After the window no new upload starts; the ones in flight get
  ``--drain-seconds`` to finish.

Outcomes are counted by what the caller saw: a stream is *completed* (status OK, every chunk
answered, the tail flushed), *refused* (an error before the config was answered; the gRPC status
and the ``hushwire-error-code`` trailer are reported) or *broken* (an error after that, or any
chunk unanswered, or a wrong output length). An upload is *accepted* (200, with a job id) or
*refused* (the HTTP status and the error code). Every file name is unique, so the jobs table of
the server's SQLite database can be compared with what was accepted: an accepted job missing from
it is *lost*, two rows for one upload are *duplicated*, a row for an upload that was not accepted
is an *orphan*. RSS (VmRSS) of the server, each job worker and the gateway is taken after a warm-up
(before), every 0.5 s during the run (peak) and ``--settle-seconds`` after everything finished
(after).

The exit status is 0 when nothing was lost, duplicated or silently dropped (refusals and broken
streams with a status are reported, not failures of the soak), 1 otherwise, 3 when the time budget
(``--max-seconds``) ran out.

    python -m bench.soak                   # 200 streams + 100 uploads for 60 s
    python -m bench.soak --quick           # 5 streams + 3 uploads for 3 s (a smoke test)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import math
import multiprocessing
import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
import httpx
import numpy as np
import soundfile as sf

from bench._common import (
    EVAL_NOISY,
    BenchTimeout,
    Children,
    cpu_seconds,
    create_key,
    install_watchdog,
    percentile,
    print_header,
    print_table,
    rss_mib,
    start_gateway,
    start_hushwire,
    stopped,
    temp_dir,
    test_audio,
    worker_pids,
)
from bench.streams import CHANNEL_OPTIONS, CHUNK_MS, METHOD, RATE_HZ, audio_requests, config_request
from client.errors import CallStatus
from hushwire.contract.metadata import ERROR_CODE_KEY
from hushwire.v1 import enhancer_pb2

OPEN_TIMEOUT_S = 60.0     # the config's answer; an overloaded server may take long, but not this long
STALL_TIMEOUT_S = 60.0    # a stream that receives nothing for this long after its half-close is broken
HTTP_TIMEOUT_S = 300.0    # far above the gateway's own bounds, so the gateway, not httpx, answers first
RSS_PERIOD_S = 0.5
LIMIT_RAISED = 1_000_000
BYTES_PER_DAY_RAISED = str(1 << 50)


# -- streams ----------------------------------------------------------------------------------------------


@dataclass
class StreamResult:
    outcome: str = "unfinished"    # completed | refused | broken | unfinished (the bench's budget ran out)
    reason: str = ""               # status/code for refused and broken streams
    sent: int = 0                  # audio requests sent
    answered: int = 0              # responses to them
    tail: bool = False             # the flush response after the half-close arrived
    frames_in: int = 0
    frames_out: int = 0
    delay: int = 0


@dataclass
class StreamStats:
    results: list[StreamResult] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    lags_s: list[float] = field(default_factory=list)


async def _status_of(call: grpc.aio.StreamStreamCall, status: CallStatus, exc: BaseException | None) -> str:
    """The call's outcome as ``STATUS/CODE``, as the server sent it: a write that raced the server's
    end of the call makes grpc report a local INTERNAL instead (client.errors.CallStatus)."""
    try:
        code = await asyncio.wait_for(call.code(), 10.0)
        error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), await call.trailing_metadata(), await call.details())
    except (TimeoutError, asyncio.CancelledError):
        if not isinstance(exc, grpc.aio.AioRpcError):
            return f"no status ({type(exc).__name__})" if exc is not None else "no status"
        error = exc
    if error.code() != grpc.StatusCode.OK:
        error = await status.error_for(error)
    trailer = next((str(v.decode() if isinstance(v, bytes) else v) for k, v in error.trailing_metadata() or ()
                    if k == ERROR_CODE_KEY), None)
    return f"{error.code().name}/{trailer}" if trailer else error.code().name


async def run_stream(k: int, n_streams: int, target: str, key: str, requests: Sequence[bytes], t0: float,
                     t_stop: float, max_ahead: int, stats: StreamStats) -> StreamResult:
    res = StreamResult()
    stats.results.append(res)  # now, so that a run cut short by the budget still counts it
    loop = asyncio.get_running_loop()
    period = CHUNK_MS / 1000.0
    chunk_frames = int(RATE_HZ * period)
    channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    call = channel.stream_stream(METHOD, response_deserializer=enhancer_pb2.StreamEnhanceResponse.FromString)(
        metadata=(("authorization", key),))
    status = CallStatus(call)
    try:
        try:
            await call.write(config_request())
            first = await asyncio.wait_for(call.read(), OPEN_TIMEOUT_S)
        except TimeoutError:
            call.cancel()
            res.outcome, res.reason = "refused", f"no answer to the config in {OPEN_TIMEOUT_S:g} s (bench timeout)"
            return res
        except Exception as exc:  # noqa: BLE001 - any failure before the config's answer is a refusal
            res.outcome, res.reason = "refused", await _status_of(call, status, exc)
            return res
        if first is grpc.aio.EOF:
            res.outcome, res.reason = "refused", await _status_of(call, status, None) + " (no config answer)"
            return res
        res.delay = first.algorithmic_delay_samples
        pending: collections.deque[float] = collections.deque()
        last_rx = [loop.time()]
        room = asyncio.Event()  # set when fewer than max_ahead chunks wait for their answer

        async def reader() -> None:
            try:
                while (resp := await call.read()) is not grpc.aio.EOF:
                    now = last_rx[0] = loop.time()
                    res.frames_out += len(resp.audio) // 2
                    if pending:
                        stats.latencies_s.append(now - pending.popleft())
                        res.answered += 1
                        room.set()
                    elif writing_done.is_set() and not res.tail:
                        res.tail = True  # the flush after the half-close (also for a stream that sent nothing)
                    else:
                        raise RuntimeError("a response that answers no request")
            finally:
                room.set()

        writing_done = asyncio.Event()
        read_task = asyncio.create_task(reader())
        phase = period * k / max(1, n_streams)  # spread the streams' chunk times over one period
        offset = (k * 37) % len(requests)
        error: BaseException | None = None
        try:
            i = 0
            while not read_task.done():
                due = t0 + phase + i * period
                if due >= t_stop:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                # A client with a bounded buffer: at most max_ahead chunks unanswered. grpc.aio
                # completes a write once core has queued it, so without this bound a client would
                # pile its whole input up in the server's and its own HTTP/2 buffers.
                while max_ahead and len(pending) >= max_ahead and not read_task.done():
                    room.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(room.wait(), max(0.0, t_stop - loop.time()))
                    if loop.time() >= t_stop:
                        break
                if loop.time() >= t_stop or read_task.done():
                    break
                sent_at = loop.time()
                stats.lags_s.append(sent_at - due)
                pending.append(sent_at)
                await call.write(requests[(offset + i) % len(requests)])
                res.sent += 1
                res.frames_in += chunk_frames
                i += 1
            if not read_task.done():
                writing_done.set()
                await call.done_writing()
            # Bounded by progress, not by a fixed time: an overloaded server works off a backlog.
            while not read_task.done():
                await asyncio.wait({read_task}, timeout=1.0)
                if not read_task.done() and loop.time() - last_rx[0] > STALL_TIMEOUT_S:
                    read_task.cancel()
                    call.cancel()
                    res.outcome, res.reason = "broken", f"no response for {STALL_TIMEOUT_S:g} s (bench timeout)"
                    break
            if not read_task.cancelled():
                error = read_task.exception()
        except Exception as exc:  # noqa: BLE001 - a failed write: the status tells why
            error = exc
        finally:
            if not read_task.done():
                read_task.cancel()
            await asyncio.gather(read_task, return_exceptions=True)
        if res.outcome == "broken":
            return res
        if error is not None:
            res.outcome = "broken"
            res.reason = (str(error) if isinstance(error, RuntimeError)
                          else f"mid-stream {await _status_of(call, status, error)}")
            return res
        ended = await _status_of(call, status, None)
        if ended != "OK":
            res.outcome, res.reason = "broken", f"ended {ended}"
        elif res.answered != res.sent:
            res.outcome, res.reason = "broken", f"{res.sent - res.answered} chunk(s) unanswered with status OK"
        elif not res.tail:
            res.outcome, res.reason = "broken", "no tail after the half-close"
        elif res.frames_out != res.frames_in + res.delay:
            res.outcome, res.reason = "broken", (f"output {res.frames_out} frames, expected "
                                                 f"{res.frames_in} + {res.delay}")
        else:
            res.outcome = "completed"
        return res
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


# -- uploads ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioFile:
    data: bytes
    suffix: str        # ".wav" | ".flac"
    content_type: str
    frames: int
    rate: int
    channels: int


@dataclass
class Upload:
    name: str
    file: AudioFile
    outcome: str = ""          # accepted | refused | error
    reason: str = ""
    job_id: str = ""
    final: str = ""            # completed | failed | unfinished
    failure: str = ""
    download: str = ""         # match | mismatch: ... | error: ...
    post_s: float = 0.0
    done_s: float = 0.0        # POST sent → seen completed


@dataclass
class UploadStats:
    uploads: list[Upload] = field(default_factory=list)
    poll_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    # (UTC time, job id, what) of each failed download, to find its request in the gateway's log
    broken_downloads: list[tuple[str, str, str]] = field(default_factory=list)


def audio_files(count: int) -> list[AudioFile]:
    """Audio files to upload: the evaluation set's noisy clips (evalset/16k), every other one as WAV."""
    paths = sorted(EVAL_NOISY.glob("*.flac"))[:count]
    sources: list[tuple[np.ndarray, int]] = []
    for path in paths:
        x, rate = sf.read(str(path), dtype="int16", always_2d=True)
        sources.append((x, rate))
    if not sources:  # no corpus: synthetic voiced bursts in noise, 3-6 s
        sources = [((test_audio(3.0 + k % 4, 16000, seed=k) * 32767).astype(np.int16)[:, None], 16000)
                   for k in range(max(2, count))]
    files = []
    for k, (x, rate) in enumerate(sources):
        buf = io.BytesIO()
        fmt, suffix, ctype = ("WAV", ".wav", "audio/wav") if k % 2 == 0 else ("FLAC", ".flac", "audio/flac")
        sf.write(buf, x, rate, format=fmt, subtype="PCM_16")
        files.append(AudioFile(buf.getvalue(), suffix, ctype, x.shape[0], rate, x.shape[1]))
    return files


def _error_code(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["code"])
    except Exception:  # noqa: BLE001 - not our JSON error: show the start of the body
        return r.text[:40].replace("\n", " ")


def _error_text(r: httpx.Response) -> str:
    """The code and the start of the message: which part of the service refused, and why (the gateway's
    "cannot be reached" and the server's "database is unavailable" are both SERVICE_UNAVAILABLE)."""
    try:
        msg = str(r.json()["error"]["msg"])
    except Exception:  # noqa: BLE001 - not our JSON error: the code line shows the body
        msg = ""
    retry = r.headers.get("retry-after")
    return (f"{_error_code(r)}" + (f" ({msg[:70]})" if msg else "")
            + (f" Retry-After {retry}" if retry is not None else ""))


async def upload_one(http: httpx.AsyncClient, key: str, up: Upload, poll_s: float, give_up_at: float,
                     stats: UploadStats) -> None:
    headers = {"Authorization": key}
    t0 = time.monotonic()
    try:
        r = await http.post("/enhance", headers=headers,
                            files={"file": (up.name, up.file.data, up.file.content_type)})
    except httpx.HTTPError as exc:
        up.outcome, up.reason = "error", f"{type(exc).__name__} (no reply: {str(exc)[:60] or 'no detail'})"
        return
    up.post_s = time.monotonic() - t0
    if r.status_code != 200:
        up.outcome, up.reason = "refused", f"{r.status_code} {_error_text(r)}"
        return
    up.outcome, up.job_id = "accepted", str(r.json()["file"])
    body: dict[str, object] = {}
    while True:
        if time.monotonic() > give_up_at:
            up.final = "unfinished"
            return
        await asyncio.sleep(poll_s)
        try:
            s = await http.get(f"/stat/jobs/{up.job_id}", headers=headers)
        except httpx.HTTPError as exc:
            stats.poll_errors[type(exc).__name__] += 1
            continue
        if s.status_code != 200:
            stats.poll_errors[f"{s.status_code} {_error_code(s)}"] += 1
            continue
        body = s.json()
        if body.get("job_status") == "completed":
            up.done_s = time.monotonic() - t0
            up.final = "completed"
            break
        if body.get("job_status") == "failed":
            up.final = "failed"
            err = body.get("error")
            up.failure = str(err.get("code")) if isinstance(err, dict) else "?"
            return
    try:
        d = await http.get(str(body["result"]))
    except httpx.HTTPError as exc:
        up.download = f"error: {type(exc).__name__} ({str(exc)[:60] or 'no detail'})"
        stats.broken_downloads.append((time.strftime("%H:%M:%S", time.gmtime()), up.job_id, up.download))
        return
    if d.status_code != 200:
        up.download = f"error: {d.status_code} {_error_text(d)}"
        return
    try:
        info = sf.info(io.BytesIO(d.content))
    except Exception as exc:  # noqa: BLE001 - an undecodable result is a mismatch, not a crash
        up.download = f"mismatch: undecodable ({exc})"
        return
    got = (info.frames, info.samplerate, info.channels)
    want = (up.file.frames, up.file.rate, up.file.channels)
    up.download = "match" if got == want else f"mismatch: {got} != {want}"


async def upload_client(c: int, http: httpx.AsyncClient, key: str, files: Sequence[AudioFile], t_stop: float,
                        poll_s: float, give_up_at: float, stats: UploadStats) -> None:
    n = 0
    while time.monotonic() < t_stop:
        f = files[(c + 7 * n) % len(files)]
        up = Upload(f"soak-c{c:03d}-n{n:04d}{f.suffix}", f)
        n += 1
        stats.uploads.append(up)
        await upload_one(http, key, up, poll_s, give_up_at, stats)
        if up.outcome != "accepted":
            await asyncio.sleep(0.2)  # a refusal comes back fast: do not spin


# -- memory -----------------------------------------------------------------------------------------------


@dataclass
class Memory:
    pids: dict[str, int]
    before: dict[str, float] = field(default_factory=dict)
    peak: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)

    def sample(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError, RuntimeError):
                out[name] = rss_mib(pid)
        return out

    def note_peak(self) -> None:
        for name, v in self.sample().items():
            self.peak[name] = max(self.peak.get(name, 0.0), v)

    def rows(self) -> list[list[object]]:
        rows: list[list[object]] = []
        for name in self.pids:
            b, p, a = self.before.get(name), self.peak.get(name), self.after.get(name)
            if b is None or p is None or a is None:
                rows.append([name, b or "–", p or "–", a or "–", "–", "–"])
                continue
            back = a <= b * 1.25 + 20.0  # as tests/test_soak.py: within 25 % + 20 MiB of the baseline
            rows.append([name, round(b, 1), round(p, 1), round(a, 1), f"{a - b:+.1f}", "yes" if back else "NO"])
        return rows


# -- the run ----------------------------------------------------------------------------------------------


def db_jobs(db_path: Path) -> list[tuple[str, str, str, int, int]]:
    """(job_id, file_name, status, attempts, held) of every row, read-only beside the running server."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)) as db:
        return [(str(a), str(b), str(c), int(d), int(e)) for a, b, c, d, e in
                db.execute("SELECT job_id, file_name, status, attempts, held FROM jobs")]


@dataclass
class Outcome:
    streams: StreamStats
    uploads: UploadStats
    memory: Memory
    window_s: float
    drain_s: float
    cpu: dict[str, float]
    db: list[tuple[str, str, str, int, int]]
    logs: dict[str, str]
    budget_ran_out: bool = False


async def soak(args: argparse.Namespace, target: str, url: str, key: str, memory: Memory,
               db_path: Path, deadline: float) -> Outcome:
    requests = audio_requests(min(30.0, args.seconds + 1))
    max_ahead = int(args.max_ahead_ms // CHUNK_MS)
    files = audio_files(args.files)
    uploads = UploadStats()
    limits = httpx.Limits(max_connections=args.uploads + 4, max_keepalive_connections=args.uploads + 4)
    stream_side = _StreamSide(args, target, key, max_ahead)
    async with httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT_S, trust_env=False, limits=limits) as http:
        # Warm-up (not counted): one short stream and one upload to completion, so imports, the
        # model's weights and the workers are loaded before the baseline is taken.
        await stream_side.ready()
        loop = asyncio.get_running_loop()
        now = loop.time()
        warm = await run_stream(0, 1, target, key, requests, now + 0.05, now + 1.0, max_ahead, StreamStats())
        if warm.outcome != "completed":
            raise RuntimeError(f"the warm-up stream failed: {warm.outcome} {warm.reason}")
        warm_up = Upload("warmup.wav", files[0])
        await upload_one(http, key, warm_up, 0.1, time.monotonic() + 120, UploadStats())
        if warm_up.download != "match":
            raise RuntimeError(f"the warm-up upload failed: {warm_up}")
        await asyncio.sleep(1.0)
        memory.before = memory.sample()
        memory.peak = dict(memory.before)

        cpu0 = {name: cpu_seconds(pid) for name, pid in memory.pids.items() if _alive(pid)}
        cpu0["load generator"] = time.process_time()
        w0 = time.monotonic()
        t0 = loop.time() + 0.5
        give_up_at = min(time.monotonic() + 0.5 + args.seconds + args.drain_seconds, deadline)
        stop_sampling = asyncio.Event()

        async def sampler() -> None:
            while not stop_sampling.is_set():
                memory.note_peak()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_sampling.wait(), RSS_PERIOD_S)

        sampling = asyncio.create_task(sampler())
        stream_side.start(t0 - loop.time() + time.monotonic(), deadline)
        upload_tasks = [upload_client(c, http, key, files, time.monotonic() + 0.5 + args.seconds,
                                      args.poll_ms / 1000, give_up_at, uploads) for c in range(args.uploads)]

        budget_ran_out = False
        streams_result = asyncio.ensure_future(stream_side.result())
        try:
            await asyncio.wait_for(asyncio.gather(*upload_tasks), max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            budget_ran_out = True  # what finished is reported; the rest shows as unfinished
        try:   # the streams' process keeps the same deadline and then reports what it has
            streams, streams_ran_out, streams_cpu = await asyncio.wait_for(
                streams_result, max(1.0, deadline + 10.0 - time.monotonic()))
            budget_ran_out = budget_ran_out or streams_ran_out
        except TimeoutError:
            streams, streams_cpu, budget_ran_out = StreamStats(), float("nan"), True
        finally:
            stop_sampling.set()
            await sampling
            stream_side.stop()
        w1 = time.monotonic()
        cpu = {name: (cpu_seconds(memory.pids[name]) - c) / (w1 - w0) for name, c in cpu0.items()
               if name in memory.pids and _alive(memory.pids[name])}
        cpu["load generator (uploads)"] = (time.process_time() - cpu0["load generator"]) / (w1 - w0)
        cpu["load generator (streams)"] = streams_cpu / (w1 - w0)
    await asyncio.sleep(args.settle_seconds)
    memory.after = memory.sample()
    return Outcome(streams, uploads, memory, args.seconds, w1 - w0, cpu, db_jobs(db_path), {}, budget_ran_out)


def _stream_side(conn: Connection, n_streams: int, target: str, key: str, seconds: float, max_ahead: int) -> None:
    """Child process: the live streams, on an event loop and a GIL of their own. In the same process
    as the 100 upload clients (httpx: polls, uploads, downloads), a stream's chunks waited behind their
    callbacks and were sent seconds late (send lag p99 22 s, 135 of 1500 chunks sent): the figures
    were the load generator's, not the server's. Sends "ready", receives (t0, deadline) on
    CLOCK_MONOTONIC, which all processes share, and sends back (stats, budget ran out, CPU seconds)."""
    requests = audio_requests(min(30.0, seconds + 1))
    conn.send("ready")
    t0, deadline = conn.recv()
    stats = StreamStats()

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        off = loop.time() - time.monotonic()
        tasks = [run_stream(k, n_streams, target, key, requests, t0 + off, t0 + seconds + off, max_ahead, stats)
                 for k in range(n_streams)]
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            return True   # what finished is reported; the rest shows as unfinished
        return False

    cpu0 = time.process_time()
    ran_out = asyncio.run(main())
    conn.send((stats, ran_out, time.process_time() - cpu0))


class _StreamSide:
    """The parent's handle on :func:`_stream_side` (started before the warm-up, so its imports are done)."""

    def __init__(self, args: argparse.Namespace, target: str, key: str, max_ahead: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_stream_side, args=(child, args.streams, target, key, args.seconds,
                                                            max_ahead), daemon=True)
        self._proc.start()

    async def ready(self) -> None:
        if not await asyncio.to_thread(self._conn.poll, 120):
            raise RuntimeError("the streams' process did not start within 120 s")
        if self._conn.recv() != "ready":
            raise RuntimeError("the streams' process did not report ready")

    def start(self, t0: float, deadline: float) -> None:
        self._conn.send((t0, deadline))

    async def result(self) -> tuple[StreamStats, bool, float]:
        while not await asyncio.to_thread(self._conn.poll, 0.5):
            if not self._proc.is_alive() and not self._conn.poll():
                raise RuntimeError(f"the streams' process died (exit status {self._proc.exitcode})")
        stats, ran_out, cpu = self._conn.recv()
        return stats, bool(ran_out), float(cpu)

    def stop(self) -> None:
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _ms(seconds: float, digits: int = 1) -> object:
    """Seconds as rounded milliseconds, or "–" when there was nothing to measure."""
    return "–" if not math.isfinite(seconds) else round(1000 * seconds, digits) if digits else round(1000 * seconds)


def _counts(values: Sequence[str]) -> str:
    c = collections.Counter(values)
    return ", ".join(f"{k} ×{v}" for k, v in c.most_common()) or "–"


def report(args: argparse.Namespace, out: Outcome) -> int:
    """Print the tables; the exit status: 0 when nothing was lost, duplicated or silently dropped."""
    problems: list[str] = []
    res = out.streams.results
    done = [r for r in res if r.outcome == "completed"]
    refused = [r for r in res if r.outcome == "refused"]
    broken = [r for r in res if r.outcome == "broken"]
    unfinished_streams = [r for r in res if r.outcome == "unfinished"]
    sent = sum(r.sent for r in res)
    answered = sum(r.answered for r in res)
    target_chunks = int(round(args.seconds / (CHUNK_MS / 1000)))
    per_stream = [r.sent for r in res if r.outcome != "refused"]
    silent = [r for r in res if "with status OK" in r.reason or "no tail" in r.reason or "output" in r.reason
              or "answers no request" in r.reason]
    if silent:
        problems.append(f"{len(silent)} stream(s) lost audio without an error status")
    if out.budget_ran_out:
        print("\nTHE TIME BUDGET (--max-seconds) RAN OUT: what had not finished is counted as unfinished")
    print(f"\nlive streams: {args.streams} × 16 kHz mono PCM16, {CHUNK_MS:g} ms chunks paced at real time, at most "
          f"{args.max_ahead_ms:g} ms of audio unanswered per stream, {args.seconds:g} s window (a stream on time sends "
          f"{target_chunks} chunks)")
    print_table(
        ["streams", "completed", "refused (status/code)", "broken (why)", "unfinished (budget)", "chunks sent",
         "chunks answered",
         "unanswered", "tails flushed", "chunks sent per stream min / median / max", "latency p50 ms",
         "p99 ms", "max ms", "send lag p99 ms"],
        [[args.streams, len(done), f"{len(refused)}: {_counts([r.reason for r in refused])}" if refused else "0",
          f"{len(broken)}: {_counts([r.reason for r in broken])}" if broken else "0", len(unfinished_streams),
          sent, answered,
          sent - answered, sum(r.tail for r in res),
          (f"{min(per_stream)} / {statistics.median(per_stream):g} / {max(per_stream)}" if per_stream else "–"),
          _ms(percentile(out.streams.latencies_s, 50)), _ms(percentile(out.streams.latencies_s, 99)),
          _ms(max(out.streams.latencies_s, default=float("nan"))), _ms(percentile(out.streams.lags_s, 99))]])

    ups = out.uploads.uploads
    accepted = [u for u in ups if u.outcome == "accepted"]
    completed = [u for u in accepted if u.final == "completed"]
    print(f"uploads: {args.uploads} concurrent REST clients, each POST /enhance → poll every {args.poll_ms:g} ms → "
          f"download, for {args.seconds:g} s, then up to {args.drain_seconds:g} s to finish")
    print_table(
        ["uploads", "accepted", "refused (HTTP code)", "no reply", "completed", "failed (code)",
         "unfinished at the end", "downloads matching length", "downloads wrong / broken", "POST p50 ms",
         "POST p99 ms", "upload→completed p50 s", "p99 s"],
        [[len(ups), len(accepted),
          f"{sum(u.outcome == 'refused' for u in ups)}: {_counts([u.reason for u in ups if u.outcome == 'refused'])}"
          if any(u.outcome == "refused" for u in ups) else "0",
          _counts([u.reason or "cut short by the budget" for u in ups if u.outcome in ("error", "")])
          if any(u.outcome in ("error", "") for u in ups) else "0",
          len(completed),
          _counts([u.failure for u in accepted if u.final == "failed"]) if any(u.final == "failed" for u in accepted)
          else "0",
          sum(u.final in ("unfinished", "") for u in accepted), sum(u.download == "match" for u in completed),
          _counts([u.download for u in completed if u.download != "match"]) if any(
              u.download != "match" for u in completed) else "0",
          _ms(percentile([u.post_s for u in accepted], 50), 0), _ms(percentile([u.post_s for u in accepted], 99), 0),
          _ms(percentile([u.done_s for u in completed], 50) / 1000), _ms(percentile([u.done_s for u in completed], 99)
                                                                         / 1000)]])
    if out.uploads.poll_errors:
        print(f"status polls answered with an error (retried): {_counts(list(out.uploads.poll_errors.elements()))}")
    for when, job_id, what in out.uploads.broken_downloads:
        print(f"download of job {job_id} at {when} UTC: {what}")
    wrong = [u for u in completed if u.download != "match"]
    if wrong:
        problems.append(f"{len(wrong)} completed job(s) whose download did not match the upload")

    # The jobs table against what the callers saw.
    by_name: dict[str, list[tuple[str, str, str, int, int]]] = collections.defaultdict(list)
    for row in out.db:
        by_name[row[1]].append(row)
    accepted_ids = {u.job_id for u in accepted}
    db_ids = {row[0] for row in out.db if row[1] != "warmup.wav"}
    lost = sorted(accepted_ids - db_ids)
    dup = sorted(name for name, rows in by_name.items() if len(rows) > 1)
    accepted_names = {u.name for u in accepted} | {"warmup.wav"}
    orphans = sorted(row[1] for row in out.db if row[1] not in accepted_names)
    mismatched = [u.name for u in accepted if u.job_id not in {r[0] for r in by_name.get(u.name, [])}]
    db_status = collections.Counter(row[2] + (" (held)" if row[4] else "") for row in out.db
                                    if row[1] != "warmup.wav")
    client_final = collections.Counter(u.final for u in accepted)
    status_disagrees = [u.name for u in accepted if u.final in ("completed", "failed")
                        and any(r[2] != u.final for r in by_name.get(u.name, []))]
    print("jobs: the server's jobs table (SQLite) against the accepted uploads (file names are unique)")
    print_table(
        ["accepted", "rows in the DB", "lost (accepted, no row)", "duplicated (rows per upload > 1)",
         "orphans (a row, upload not accepted)", "row ≠ reply's job id", "status disagrees with the poll",
         "DB statuses", "max attempts"],
        [[len(accepted), len(db_ids), len(lost), len(dup), len(orphans), len(mismatched), len(status_disagrees),
          _counts(list(db_status.elements())), max((row[3] for row in out.db), default=0)]])
    for what, items in (("lost", lost), ("duplicated", dup), ("orphans", orphans), ("wrong job id", mismatched),
                        ("status disagrees", status_disagrees)):
        if items:
            problems.append(f"jobs {what}: {len(items)} ({', '.join(items[:5])}{', …' if len(items) > 5 else ''})")
    unfinished = client_final.get("unfinished", 0) + client_final.get("", 0)
    if unfinished:
        print(f"note: {unfinished} accepted job(s) were not finished when the drain time ran out "
              f"(still in the DB: not lost)")

    print(f"memory (VmRSS, MiB): before = after a warm-up; peak = sampled every {RSS_PERIOD_S:g} s; "
          f"after = {args.settle_seconds:g} s after the last job finished")
    print_table(["process", "before", "peak", "after", "after − before", "back near baseline (≤ +25 % + 20 MiB)"],
                out.memory.rows())
    print(f"CPU over the {out.drain_s:.0f} s of load (share of one core): "
          + ", ".join(f"{k} {100 * v:.0f} %" for k, v in out.cpu.items()))
    for name, text in out.logs.items():
        tracebacks = text.count("Traceback")
        internal = text.count("INTERNAL")
        uncancelled = text.count("could not cancel job")  # the gateway: a refused request's job may stay
        print(f"{name} log: {tracebacks} traceback(s), {internal} line(s) with INTERNAL"
              + (f", {uncancelled} job(s) of refused requests not cancelled" if uncancelled else ""))
        if tracebacks:
            problems.append(f"{tracebacks} traceback(s) in the {name} log")
    if problems:
        print("\nLOST OR WRONG: " + "; ".join(problems))
        return 1
    print("\nnothing lost: every accepted job is in the DB exactly once, every completed stream's chunks were "
          "answered and its tail flushed, every completed job's download matched its upload")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 streams, 3 upload clients, 3 s")
    parser.add_argument("--streams", type=int, default=200, help="concurrent live streams")
    parser.add_argument("--uploads", type=int, default=100, help="concurrent REST upload clients")
    parser.add_argument("--seconds", type=float, default=60.0, help="the load window")
    parser.add_argument("--drain-seconds", type=float, default=300.0,
                        help="after the window, time for jobs in flight to finish")
    parser.add_argument("--settle-seconds", type=float, default=5.0, help="wait before the 'after' RSS")
    parser.add_argument("--poll-ms", type=float, default=500.0, help="job status poll period per client")
    parser.add_argument("--max-ahead-ms", type=float, default=1000.0,
                        help="audio a stream may have sent and not had answered (0: no bound)")
    parser.add_argument("--files", type=int, default=20, help="distinct audio files to upload (from the corpus)")
    parser.add_argument("--max-streams-per-user", type=int, default=LIMIT_RAISED,
                        help="the server's limit (default: raised out of the way; lower it to see RATE_LIMITED)")
    parser.add_argument("--max-queued-jobs-per-user", type=int, default=LIMIT_RAISED,
                        help="the server's limit (default: raised out of the way; lower it to see RATE_LIMITED)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server job workers")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir and logs")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="hard bound on the whole run")
    args = parser.parse_args(argv)
    if args.quick:
        args.streams, args.uploads, args.seconds = 5, 3, 3.0
        args.drain_seconds, args.settle_seconds, args.poll_ms, args.files = 60.0, 1.0, 100.0, 4
        args.max_seconds = min(args.max_seconds, 150.0)
    install_watchdog(args.max_seconds)
    print_header("bench.soak", "Soak: live streams and REST uploads at once, nothing lost")
    limits = ("per-user limits raised" if LIMIT_RAISED == args.max_streams_per_user == args.max_queued_jobs_per_user
              else f"per-user limits: {args.max_streams_per_user} streams, {args.max_queued_jobs_per_user} "
                   "unfinished jobs")
    print(f"{args.streams} streams + {args.uploads} upload clients for {args.seconds:g} s, {args.workers} job "
          f"worker(s), {limits}; loopback only; bound {args.max_seconds:g} s")
    started = time.monotonic()
    try:
        with Children() as children, temp_dir(args.keep) as tmp:
            data = tmp / "data"
            srv = start_hushwire(children, data, "--max-streams-per-user", str(args.max_streams_per_user),
                                 "--max-queued-jobs-per-user", str(args.max_queued_jobs_per_user),
                                 "--max-bytes-per-day-per-user", BYTES_PER_DAY_RAISED, workers=args.workers)
            gw = start_gateway(children, tmp, srv.target)
            key = create_key(data)
            pids = {"server": srv.pid, "gateway": gw.pid}
            pids.update({f"worker {i}": pid for i, pid in enumerate(worker_pids(srv.pid))})
            memory = Memory(pids)
            deadline = started + args.max_seconds - 20.0
            out = asyncio.run(soak(args, srv.target, gw.url, key, memory, data / "hushwire.db", deadline))
            if args.keep:
                print(f"data dir and logs kept in {tmp}")
            children.stop_all()
            out.logs = {"server": srv.log(), "gateway": gw.log()}
    except (BenchTimeout, KeyboardInterrupt) as exc:
        return stopped(exc)
    status = report(args, out)
    print(f"\nwall time {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
