"""Every core: one server process against a group of two on one port (``hushwire serve --processes``).

The same live streams as bench.streams (16 kHz mono PCM16, 20 ms chunks at real time, one connection
per stream, like real callers), offered to two servers started side by side:

- **one process**: ``serve --processes 1``, pinned to core 1 (taskset);
- **two processes**: ``serve --processes 2``, its sibling processes pinned one per core (core 1 and
  core 0) after they start; the kernel spreads the streams' connections over them (SO_REUSEPORT).

The load generator (this process) is pinned to core 0 in both layouts, so on a 2-core machine it has
a core to itself against one process, and shares core 0 with a sibling against two: its CPU is
reported for every level. The comparison is at the same load *per server process*: ``N`` streams
against one process, ``2N`` against two. Each round measures both servers at every level,
alternating which goes first, and the summary takes medians over rounds.

Reported per level: the server's CPU per stream-second (CPU time of its server processes, all
threads, over stream-seconds) and the CPU-bound capacity estimate, the streams the server could
carry if CPU were the only limit:

- one process: ``N / CPU share`` (bench.streams' estimate: streams per core);
- two processes, **filled**: the sum over siblings of ``streams_i / CPU share_i``: each sibling's own
  estimate. That is what a group reaches when it fills up, because a full sibling refuses new
  streams with OVERLOADED and clients retry on another connection (admission control, the
  gateway's and the client library's connection pools);
- two processes, **as spread**: ``2N / max_i CPU share_i``: if the streams stayed spread the way
  the kernel's connection hash put them, the busiest sibling saturates first.

Per-sibling stream counts come from the server's ``hushwire_process_streams_open`` metric.

    python -m bench.processes                       # levels 20,40 per process, 3 rounds
    python -m bench.processes --quick               # tiny sizes, a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench._common import (
    BenchTimeout,
    Child,
    Children,
    child_pids,
    create_key,
    free_port,
    install_watchdog,
    pin_self,
    print_header,
    print_table,
    start_hushwire,
    stopped,
    temp_dir,
)
from bench.streams import CHUNK_MS, Level, audio_requests, run_level

_SIBLING = re.compile(r"process (\d+) of \d+ serving \(pid (\d+)\)")
_PER_PID = re.compile(r'^hushwire_process_streams_open(?:\{pid="(\d+)"\})? (\S+)$', re.MULTILINE)


@dataclass
class Measured:
    layout: str
    round: int
    per_process: int          # N
    level: Level
    pids: list[int]
    streams_per_pid: list[float]

    @property
    def cpu_ms_per_stream_s(self) -> float:
        return 1000 * self.level.server_cpu / self.level.streams if self.level.streams else float("nan")

    @property
    def capacity_filled(self) -> float:
        pairs = list(zip(self.streams_per_pid, self.level.server_cpus, strict=True))
        return sum(s / c for s, c in pairs if c > 0) if pairs else float("nan")

    @property
    def capacity_as_spread(self) -> float:
        busiest = max(self.level.server_cpus, default=0.0)
        return self.level.streams / busiest if busiest > 0 else float("nan")

    def row(self, p99_ms: float) -> list[object]:
        lv = self.level
        errs = ", ".join(f"{k}×{v}" for k, v in lv.errors.items()) or "0"
        shares = " + ".join(f"{100 * c:.0f}" for c in lv.server_cpus) + " %"
        spread = " + ".join(f"{s:.0f}" for s in self.streams_per_pid)
        return [self.round, self.layout, lv.streams, spread, round(lv.p(50), 2), round(lv.p(99), 2), lv.dropped, errs,
                shares, round(self.cpu_ms_per_stream_s, 2), _int(self.capacity_filled),
                _int(self.capacity_as_spread), f"{100 * lv.client_cpu:.0f} %",
                "pass" if lv.passed(p99_ms) else "FAIL"]


HEADERS = ["round", "server", "streams", "streams per process", "p50 ms", "p99 ms", "dropped", "errors",
           "server CPU per process (siblings + parent)", "server CPU ms per stream-second", "capacity est. (filled)",
           "capacity est. (as spread)", "load-gen CPU", "p99 ≤ target"]


def _siblings(child: Child) -> list[int]:
    found = dict(_SIBLING.findall(child.log()))
    return [int(found[k]) for k in sorted(found, key=int)]


def _pin(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` (threads started later inherit it from their creator)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), {cpu})
        except OSError:
            pass


def _streams_per_pid(metrics_port: int, pids: list[int]) -> dict[int, float]:
    """Open streams per server process (one process: its metric has no pid label)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return {int(pid) if pid else pids[0]: float(v) for pid, v in _PER_PID.findall(text)}


def _int(x: float) -> object:
    return round(x) if x == x else "–"


async def _measure(layout: str, r: int, n: int, streams: int, srv: Child, key: str, pids: list[int], metrics: int,
                   args: argparse.Namespace, requests: list[bytes]) -> Measured:
    seen: dict[int, float] = {}

    async def probe() -> None:
        # Mid-window: every stream is open (channels take well under a second to connect).
        await asyncio.sleep(1.0 + args.warmup + args.seconds / 2)
        seen.update(await asyncio.to_thread(_streams_per_pid, metrics, pids))

    level, _ = await asyncio.gather(
        run_level(srv.target, key, streams, args.seconds, args.warmup, srv.pid, requests, server_pids=pids),
        probe())
    parent = pids[-1] if len(pids) > 1 else None   # serves no streams, so it has no series of its own
    m = Measured(layout, r, n, level, pids, [seen.get(p, 0.0 if p == parent else float("nan")) for p in pids])
    print("  " + " | ".join(str(c) for c in m.row(args.p99_ms)), flush=True)
    await asyncio.sleep(1.0)   # the server closes the streams before the next level
    return m


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


async def _main(args: argparse.Namespace) -> int:
    requests = audio_requests(min(30.0, args.warmup + args.seconds + 1))
    results: list[Measured] = []
    with Children() as children, temp_dir() as tmp:
        common = ("--max-streams-per-user", "100000", "--live-cpu-budget", "0", "--workers", "0")
        m1, m2, m0 = free_port(), free_port(), free_port()
        one = start_hushwire(children, tmp / "one", *common, "--processes", "1", "--metrics-port", str(m1),
                             cpu=args.server_cpu, workers=0)
        # The control: one process on the load generator's core, as one of the two siblings is.
        one0 = start_hushwire(children, tmp / "one0", *common, "--processes", "1", "--metrics-port", str(m0),
                              cpu=args.client_cpu, workers=0)
        two = start_hushwire(children, tmp / "two", *common, "--processes", "2", "--metrics-port", str(m2),
                             cpu=None, workers=0)
        siblings = _siblings(two)
        assert len(siblings) == 2, two.log()
        for pid, cpu in zip(siblings, (args.server_cpu, args.client_cpu), strict=True):
            _pin(pid, cpu)
        pin_self(args.client_cpu)
        keys = {"one": create_key(tmp / "one"), "two": create_key(tmp / "two"), "one@0": create_key(tmp / "one0")}
        print(f"one process: pid {one.pid} on core {args.server_cpu} (and, the control 'one@0', pid {one0.pid} on "
              f"core {args.client_cpu}, with the load generator); two processes: siblings {siblings} on cores "
              f"{args.server_cpu} and {args.client_cpu}, their parent (pid {two.pid}: metrics, health, "
              "supervision; counted as the third figure) unpinned; load generator "
              f"(this process, pid {os.getpid()}) on core {args.client_cpu}; helper processes: "
              f"{child_pids(two.pid)}")
        print("\nper level (as measured):")
        print("  " + " | ".join(HEADERS), flush=True)
        for r in range(1, args.rounds + 1):
            for n in args.per_process:
                layouts = [("one", 1, one, m1), ("two", 2, two, m2), ("one@0", 1, one0, m0)]
                shift = (r + args.per_process.index(n)) % 3   # each layout goes first, second and third
                for layout, k, srv, metrics in layouts[shift:] + layouts[:shift]:
                    pids = [srv.pid] if k == 1 else [*siblings, two.pid]
                    results.append(await _measure(layout, r, n, k * n, srv, keys[layout], pids, metrics, args,
                                                  requests))

    print("\nlevels measured:")
    print_table(HEADERS, [m.row(args.p99_ms) for m in results])
    rows = []
    for n in args.per_process:
        a = [m for m in results if m.layout == "one" and m.per_process == n]
        b = [m for m in results if m.layout == "two" and m.per_process == n]
        c = [m for m in results if m.layout == "one@0" and m.per_process == n]
        cpu_a, cpu_b = _median([m.cpu_ms_per_stream_s for m in a]), _median([m.cpu_ms_per_stream_s for m in b])
        cpu_c = _median([m.cpu_ms_per_stream_s for m in c])
        cap_a = _median([m.capacity_filled for m in a])
        filled_b, spread_b = _median([m.capacity_filled for m in b]), _median([m.capacity_as_spread for m in b])
        rows.append([n, 2 * n, round(cpu_a, 2), round(cpu_b, 2), f"{cpu_b / cpu_a:.2f}", _int(cap_a),
                     _int(filled_b), f"{filled_b / cap_a:.2f}", _int(spread_b), f"{spread_b / cap_a:.2f}",
                     f"{100 * _median([m.level.client_cpu for m in a]):.0f} %",
                     f"{100 * _median([m.level.client_cpu for m in b]):.0f} %", round(cpu_c, 2),
                     f"{2 * cpu_b / (cpu_a + cpu_c):.2f}"])
    print(f"\nsummary (medians of {args.rounds} round(s); 16 kHz mono, {CHUNK_MS:g} ms chunks, one connection "
          "per stream):")
    print_table(["streams per process", "streams (2 processes)", "CPU ms/stream-s, 1 process",
                 "CPU ms/stream-s, 2 processes", "ratio 2/1 (target ≤ 1.1)", "capacity est., 1 process",
                 "capacity est., 2 processes (filled)", "ratio (target ≥ 1.8)",
                 "capacity est., 2 processes (as spread)", "ratio as spread", "load-gen CPU, 1 process",
                 "load-gen CPU, 2 processes", "control: CPU ms/stream-s, 1 process on the load-gen core",
                 "ratio 2 / mean of 1 on each core"], rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: 2 streams per process, 2 s, 1 round")
    parser.add_argument("--per-process", type=lambda s: [int(x) for x in s.split(",")], default=[20, 40],
                        help="streams per server process: N against one process, 2N against two (default 20,40)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds at the start of a level")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--p99-ms", type=float, default=10.0, help="p99 added latency a level should stay under")
    parser.add_argument("--server-cpu", type=int, default=1, help="the one process's core (and a sibling's)")
    parser.add_argument("--client-cpu", type=int, default=0, help="the load generator's core (and a sibling's)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="hard bound on the whole run")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_process, args.seconds, args.warmup, args.rounds = [2], 2.0, 0.5, 1
        args.max_seconds = min(args.max_seconds, 120.0)
    cpus = os.sched_getaffinity(0)
    if not {args.server_cpu, args.client_cpu} <= cpus or args.server_cpu == args.client_cpu:
        print(f"needs two usable cores ({args.server_cpu} and {args.client_cpu}); this process may use {sorted(cpus)}",
              file=sys.stderr)
        return 2
    install_watchdog(args.max_seconds)
    print_header("bench.processes", "Every core: one server process vs two on one port (serve --processes)")
    print(f"{args.per_process} streams per server process, {args.seconds:g} s each after {args.warmup:g} s warm-up, "
          f"{args.rounds} round(s); bound {args.max_seconds:g} s; started {time.strftime('%H:%M:%S')}")
    try:
        return asyncio.run(_main(args))
    except (BenchTimeout, KeyboardInterrupt) as exc:
        return stopped(exc)


if __name__ == "__main__":
    sys.exit(main())
