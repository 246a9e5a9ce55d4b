"""Admission control under overload: offer twice the knee at once and see who gets in, and how they fare.

One ``hushwire serve`` (admission control on, ``--live-cpu-budget`` as given) pinned to
``--server-cpu``; this process, the load generator, pinned to ``--client-cpu``. Two phases in one run,
on the same server:

1. **overload**: ``--offered`` streams (default twice ``--knee``) open within ``--burst-seconds``
   (a replica's clients reconnecting after it died), each on its own connection; the admitted ones
   stream 16 kHz mono PCM16 in 20 ms chunks at real time for ``--seconds``.
2. **baseline**: as many streams as phase 1 admitted, with no excess load, for ``--seconds``.

Reported: admitted and refused, the refusals' codes and latency (from the config's write to the
status), the admitted streams' added latency (response arrival minus the chunk's send time, after
``--warmup``) against the baseline's, the streams that fell behind real time (a chunk answered more
than ``--behind-ms`` late), and both processes' CPU.

    taskset -c 1 python -m bench.overload --knee 40 --seconds 30     # the issue's benchmark
    python -m bench.overload --quick                                  # a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from bench._common import (
    BenchTimeout,
    Children,
    cpu_seconds,
    create_key,
    free_port,
    install_watchdog,
    percentile,
    pin_self,
    print_header,
    print_table,
    sched_seconds,
    start_hushwire,
    temp_dir,
    usable_cpus,
)
from bench.streams import CHUNK_MS, METHOD, audio_requests, config_request, open_channels, run_level


@dataclass
class Stream:
    admitted: bool = False
    code: str = ""
    answered_s: float = math.nan            # config written -> first answer or refusal
    latencies_s: list[float] = field(default_factory=list)
    error: str = ""
    unanswered: int = 0                     # chunks sent that got no response


@dataclass
class Phase:
    streams: list[Stream]
    server_cpu: float = 0.0
    server_got: float = math.nan   # share of the CPU the server asked for that it got (schedstat)
    client_cpu: float = 0.0

    @property
    def admitted(self) -> list[Stream]:
        return [s for s in self.streams if s.admitted]

    @property
    def refused(self) -> list[Stream]:
        return [s for s in self.streams if not s.admitted]


async def overload(target: str, key: str, offered: int, burst_s: float, seconds: float, warmup: float,
                   server_pid: int, requests: Sequence[bytes]) -> Phase:
    phase = Phase([Stream() for _ in range(offered)])
    period = CHUNK_MS / 1000.0
    config = config_request()
    channels = open_channels(target, offered)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 10.0) for ch in channels))
        t_open = loop.time() + 0.1
        t0 = t_open + burst_s + 0.2   # every admitted stream starts its audio here, after the burst
        measure_from = t0 + warmup
        n_chunks = int(round((warmup + seconds) / period))

        async def drive(k: int) -> None:
            s = phase.streams[k]
            await asyncio.sleep(max(0.0, t_open + burst_s * k / offered - loop.time()))
            call = channels[k].stream_stream(METHOD)(metadata=(("authorization", key),))
            opened = loop.time()
            try:
                await call.write(config)
                first = await call.read()
            except grpc.aio.AioRpcError as err:
                s.answered_s = loop.time() - opened
                s.code = dict(err.trailing_metadata() or ()).get("hushwire-error-code") or err.code().name
                return
            s.answered_s = loop.time() - opened
            if first is grpc.aio.EOF:
                s.code = "EOF"
                return
            s.admitted = True
            pending: collections.deque[float] = collections.deque()

            async def reader() -> None:
                while await call.read() is not grpc.aio.EOF:
                    now = loop.time()
                    if pending:
                        sent_at = pending.popleft()
                        if sent_at >= 0:
                            s.latencies_s.append(now - sent_at)

            read_task = asyncio.create_task(reader())
            phase_s = period * k / offered
            try:
                for i in range(n_chunks):
                    due = t0 + phase_s + i * period
                    if (wait := due - loop.time()) > 0:
                        await asyncio.sleep(wait)
                    pending.append(loop.time() if due >= measure_from else -1.0)
                    await call.write(requests[(k * 37 + i) % len(requests)])
                    if read_task.done():
                        break
                await call.done_writing()
                await asyncio.wait_for(read_task, 10.0)
            except (grpc.aio.AioRpcError, TimeoutError, asyncio.InvalidStateError) as exc:
                s.error = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
            finally:
                if not read_task.done():
                    read_task.cancel()
                    call.cancel()
                await asyncio.gather(read_task, return_exceptions=True)
                s.unanswered = len(pending)

        async def meter() -> None:
            await asyncio.sleep(max(0.0, measure_from - loop.time()))
            c0, s0, w0, q0 = time.process_time(), cpu_seconds(server_pid), loop.time(), sched_seconds(server_pid)
            await asyncio.sleep(seconds)
            c1, s1, w1, q1 = time.process_time(), cpu_seconds(server_pid), loop.time(), sched_seconds(server_pid)
            phase.client_cpu, phase.server_cpu = (c1 - c0) / (w1 - w0), (s1 - s0) / (w1 - w0)
            run, wait = q1[0] - q0[0], q1[1] - q0[1]
            phase.server_got = run / (run + wait) if run > 0 else math.nan

        await asyncio.gather(meter(), *(drive(k) for k in range(offered)))
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    return phase


# How long the baseline's streams may retry a refusal (admission's slow start) before they count as failed.
BASELINE_ADMIT_S = 10.0


def _got(share: float) -> str:
    return "–" if math.isnan(share) else f"{100 * share:.0f} %"


def _ms(x: float) -> float:
    return round(1000 * x, 2)


async def _main(args: argparse.Namespace, server_cpu: int | None) -> int:
    offered = args.offered or 2 * args.knee
    requests = audio_requests(min(args.seconds + args.warmup, 20.0))
    rows: list[list[object]] = []
    summary: list[list[object]] = []
    with Children() as children, temp_dir() as tmp:
        data = tmp / "data"
        srv = start_hushwire(children, data, "--max-streams-per-user", "100000", "--live-cpu-budget",
                             str(args.live_cpu_budget), "--metrics-port", str(free_port()), cpu=server_cpu,
                             workers=0)
        key = create_key(data)
        for r in range(1, args.rounds + 1):
            ph = await overload(srv.target, key, offered, args.burst_seconds, args.seconds, args.warmup, srv.pid,
                                requests)
            admitted, refused = ph.admitted, ph.refused
            # The same number of streams with no excess load. They open as clients do, retrying a refusal
            # (admission's slow start lets a burst onto a quiet server in over a few half-second windows),
            # so the baseline measures the same count, not the few of a burst that got in at once.
            base = await run_level(srv.target, key, len(admitted), args.seconds, args.warmup, srv.pid, requests,
                                   admit_within_s=BASELINE_ADMIT_S) if admitted else None
            lat = [x for s in admitted for x in s.latencies_s]
            behind = [s for s in admitted if s.error or max(s.latencies_s, default=0.0) > args.behind_ms / 1000]
            codes = collections.Counter(s.code for s in refused)
            refusal = [s.answered_s for s in refused]
            rows.append([r, "overload", offered, len(admitted), len(refused),
                         ", ".join(f"{c}×{n}" for c, n in codes.items()) or "–",
                         _ms(percentile(refusal, 50)) if refusal else "–",
                         _ms(max(refusal)) if refusal else "–",
                         _ms(percentile(lat, 50)) if lat else "–", _ms(percentile(lat, 99)) if lat else "–",
                         _ms(max(lat, default=math.nan)), len(behind), sum(s.unanswered for s in admitted),
                         f"{100 * ph.server_cpu:.0f} %", _got(ph.server_got), f"{100 * ph.client_cpu:.0f} %"])
            if base is not None:
                failed = sum(base.errors.values())
                base_behind = failed + sum(1 for m in base.stream_max_s if m > args.behind_ms / 1000)
                codes_text = ", ".join(f"{c}×{n}" for c, n in base.errors.items())
                rows.append([r, "baseline", len(admitted), len(admitted) - failed, base.retried + failed,
                             (f"retried×{base.retried}" if base.retried else "") + (", " if base.retried and failed
                                                                                   else "") + codes_text or "–",
                             "–", "–", round(base.p(50), 2), round(base.p(99), 2),
                             round(1000 * max(base.latencies_s, default=math.nan), 2), base_behind, base.dropped,
                             f"{100 * base.server_cpu:.0f} %", _got(base.server_got),
                             f"{100 * base.client_cpu:.0f} %"])
                summary.append([r, len(admitted), len(refused),
                                round(percentile(lat, 99) * 1000 - base.p(99), 2) if lat else "–",
                                _ms(max(refusal)) if refusal else "–", len(behind)])
    print_table(["round", "phase", "offered", "admitted", "refused", "refusal codes", "refusal p50 ms",
                 "refusal max ms", "p50 ms", "p99 ms", "max ms", "streams behind", "unanswered chunks",
                 "server CPU", "server got", "load-gen CPU"], rows)
    print("(server got: the share of the CPU the server asked for that it got, run / (run + runnable wait) from "
          "Linux schedstat; under 100 % other work held its core. baseline refusals: OVERLOADED answers to "
          "opens that were retried until admitted; streams behind: a chunk answered more than "
          f"{args.behind_ms:g} ms late, or the stream failed)")
    print()
    print_table(["round", "admitted", "refused", "p99 overload − baseline ms", "slowest refusal ms",
                 "admitted streams behind"], summary)
    if len(summary) > 1:
        deltas = [s[3] for s in summary if isinstance(s[3], float)]
        if deltas:
            print(f"\nmedian p99 difference over {len(deltas)} rounds: {statistics.median(deltas):.2f} ms")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--knee", type=int, default=40, help="the knee found by bench.streams (issue #17: 40)")
    parser.add_argument("--offered", type=int, default=0, help="streams offered (default: twice --knee)")
    parser.add_argument("--burst-seconds", type=float, default=1.0, help="the offered streams open within this")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds at a phase's start")
    parser.add_argument("--behind-ms", type=float, default=200.0,
                        help="a chunk answered later than this means its stream fell behind real time")
    parser.add_argument("--live-cpu-budget", type=float, default=0.9, help="the server's --live-cpu-budget")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: 12 streams on a 0.1 budget, 3 s")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="hard bound on the whole run")
    args = parser.parse_args(argv)
    if args.quick:
        args.knee, args.seconds, args.live_cpu_budget, args.offered = 6, 3.0, 0.1, 12
    server_cpu, client_cpu = usable_cpus(args.server_cpu, args.client_cpu)
    pin_self(client_cpu)
    print_header("bench.overload", f"server on CPU {server_cpu}, load generator on CPU {client_cpu}; "
                 f"offered {args.offered or 2 * args.knee} streams within {args.burst_seconds:g} s, "
                 f"{args.seconds:g} s each; --live-cpu-budget {args.live_cpu_budget:g}")
    install_watchdog(args.max_seconds)
    try:
        return asyncio.run(_main(args, server_cpu))
    except BenchTimeout as exc:
        print(f"bench.overload: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
