"""Scaling out: live streams and file-job throughput for 1 vs 2 replicas behind HAProxy.

Both runs go through the same path: HAProxy 2.6 running ``deploy/haproxy/grpc.cfg`` (loopback
addresses swapped in) in front of 1, then 2 ``hushwire serve`` replicas sharing one SQLite file and
one blob folder (``--database-url``/``--blob-url``), each with ``--workers 1`` and the HTTP health
mirror that HAProxy checks. Only the replica count changes.

- **Streams**: 16 kHz mono PCM16 streams in 20 ms chunks at real time, each on its own connection to
  HAProxy (the load generator of ``bench.streams``). Levels in ``--levels`` order until one fails
  (the ``--quantile`` (99) of the added latency over ``--latency-ms`` (10), or anything dropped),
  then ``--bisect`` steps: the knee is
  the largest passing level. CPU of the replicas (summed, job workers excluded), of HAProxy and of
  the load generator is measured over each level's window.
- **Jobs**: ``--jobs`` files of ``--file-seconds`` s (16 kHz mono) submitted over gRPC through
  HAProxy at once; throughput is their audio seconds divided by the wall time from the first
  upload to the last completion.

Nothing is pinned: the replicas, their workers, HAProxy and the load generator share the machine's
cores, as they would on one small host. On a 2-core machine that is what limits the ratio.

    python -m bench.replicas            # a few minutes
    python -m bench.replicas --rounds 3 # medians over alternating runs (the machine's load drifts)
    python -m bench.replicas --quick    # tiny sizes, a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from bench._common import (
    HUSHWIRE,
    ROOT,
    BenchTimeout,
    Child,
    Children,
    child_env,
    cpu_seconds,
    install_watchdog,
    print_header,
    print_table,
    stopped,
    temp_dir,
    test_audio,
    worker_pids,
)
from bench.streams import Level, audio_requests, run_level

DEPLOY_CFG = ROOT / "deploy" / "haproxy" / "grpc.cfg"
DEFAULT_LEVELS = (5, 10, 15, 20, 30, 40, 60)


@dataclass
class Setup:
    replicas: list[Child]
    haproxy: Child
    key: str

    @property
    def target(self) -> str:
        return self.haproxy.target

    def replica_pids(self) -> list[int]:
        return [r.pid for r in self.replicas]


@dataclass
class Result:
    replicas: int
    round: int = 1
    levels: list[tuple[Level, dict[str, float]]] = field(default_factory=list)
    knee: int = 0
    first_fail: int | None = None
    jobs_done: int = 0
    jobs_failed: int = 0
    job_wall_s: float = float("nan")
    job_audio_s: float = 0.0
    job_cpu: dict[str, float] = field(default_factory=dict)

    @property
    def job_rate(self) -> float:
        return self.job_audio_s / self.job_wall_s if self.job_wall_s > 0 else float("nan")

    def per_core(self) -> float:
        """Streams per core of replica CPU at the largest passing level (the CPU cost, which other
        work on the machine moves far less than it moves the latency knee)."""
        passing = [(lv, cpu) for lv, cpu in self.levels if lv.streams == self.knee]
        if not passing or passing[0][1].get("replicas", 0) <= 0:
            return float("nan")
        lv, cpu = passing[0]
        return lv.streams / cpu["replicas"]


# -- processes ----------------------------------------------------------------------------------------


def render_haproxy(src: Path, port: int, servers: list[tuple[str, int, int]], sock: Path) -> str:
    """The deploy config with loopback addresses (the same rule as tests/replica_fixtures.py)."""
    out, done = [], False
    for line in src.read_text().splitlines():
        words = line.split()
        if words[:1] == ["bind"]:
            out.append(f"    bind 127.0.0.1:{port} {' '.join(words[2:])}")
        elif words[:2] == ["stats", "socket"]:
            out.append(f"    stats socket {sock} {' '.join(words[3:])}")
        elif words[:1] == ["server"]:
            if not done:
                done = True
                for name, p, check in servers:
                    opts = list(words[3:])
                    opts[opts.index("port") + 1] = str(check)
                    out.append(f"    server {name} 127.0.0.1:{p} {' '.join(opts)}")
        elif words[:1] == ["log"]:
            continue  # one line per call in the log would cost the balancer CPU in a benchmark
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_servers_up(sock: Path, n: int) -> bool:
    import socket

    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(sock))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return False
    lines = data.decode(errors="replace").splitlines()
    if not lines:
        return False
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
    up = [r for r in rows if r.get("svname", "").startswith("r") and r.get("status", "").startswith("UP")]
    return len(up) == n


def start_setup(children: Children, tmp: Path, n: int, stores: tuple[str, str], env: dict[str, str],
                key: str) -> Setup:
    replicas, servers = [], []
    for i in range(n):
        data = tmp / f"replica{i}"
        data.mkdir(parents=True, exist_ok=True)
        health = free_port()
        argv = [*HUSHWIRE, "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data),
                "--database-url", stores[0], "--blob-url", stores[1], "--workers", "1",
                "--health-http-port", str(health), "--max-streams-per-user", "100000",
                "--max-queued-jobs-per-user", "100000"]
        child = children.start(f"replica {i}", argv, data / "server.log", env=env)
        replicas.append(child)
        servers.append((f"r{i}", child.port, health))
    port = free_port()
    sock = tmp / f"haproxy-{n}.sock"
    cfg = tmp / f"haproxy-{n}.cfg"
    cfg.write_text(render_haproxy(DEPLOY_CFG, port, servers, sock))
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    lb = children.start_ready("haproxy", [haproxy, "-db", "-f", str(cfg)], tmp / f"haproxy-{n}.log",
                              ready=lambda: haproxy_servers_up(sock, n), env=env)
    lb.port = port
    return Setup(replicas, lb, key)


# -- measurements -------------------------------------------------------------------------------------


async def measured_level(setup: Setup, n: int, args: argparse.Namespace, requests: list[bytes],
                         ) -> tuple[Level, dict[str, float]]:
    """One level of ``n`` streams through HAProxy, with every process's CPU over the measured window."""
    cpu: dict[str, float] = {}
    pids = {"replicas": setup.replica_pids(), "haproxy": [setup.haproxy.pid]}

    async def meter() -> None:
        await asyncio.sleep(0.1 + args.warmup)
        t0, before = time.monotonic(), {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
        await asyncio.sleep(args.seconds)
        dt = time.monotonic() - t0
        cpu.update({k: (sum(cpu_seconds(p) for p in v) - before[k]) / dt for k, v in pids.items()})

    level, _ = await asyncio.gather(
        run_level(setup.target, setup.key, n, args.seconds, args.warmup, setup.replicas[0].pid, requests), meter())
    cpu["load-gen"] = level.client_cpu
    return level, cpu


def passed(level: Level, args: argparse.Namespace) -> bool:
    """Nothing dropped, no error, and the ``--quantile`` of the added latency within ``--latency-ms``."""
    return level.dropped == 0 and not level.errors and level.p(args.quantile) <= args.latency_ms


def level_row(r: Result, level: Level, cpu: dict[str, float], args: argparse.Namespace) -> list[object]:
    errs = ", ".join(f"{k}×{v}" for k, v in level.errors.items()) or "0"
    return [r.replicas, level.streams, round(level.p(50), 2), round(level.p(99), 2), level.dropped, errs,
            f"{100 * cpu.get('replicas', 0):.0f} %", f"{100 * cpu.get('haproxy', 0):.0f} %",
            f"{100 * cpu.get('load-gen', 0):.0f} %", "pass" if passed(level, args) else "FAIL"]


LEVEL_HEADERS = ["replicas", "streams", "p50 ms", "p99 ms", "dropped", "errors", "replicas CPU (sum)",
                 "HAProxy CPU", "load-gen CPU", "≤ target"]


async def knee(setup: Setup, r: Result, args: argparse.Namespace, requests: list[bytes], deadline: float) -> None:
    cost = args.warmup + args.seconds + 6.0

    async def measure(n: int) -> bool:
        level, cpu = await measured_level(setup, n, args, requests)
        r.levels.append((level, cpu))
        print("  " + " | ".join(str(c) for c in level_row(r, level, cpu, args)), flush=True)
        await asyncio.sleep(1.0)
        return passed(level, args)

    for n in args.levels:
        if time.monotonic() + cost > deadline:
            print(f"  (time budget: stopping before {n} streams)", flush=True)
            return
        if await measure(n):
            r.knee = n
        else:
            r.first_fail = n
            break
    for _ in range(args.bisect):
        if r.first_fail is None or r.first_fail - r.knee <= max(1, r.knee // 10) or time.monotonic() + cost > deadline:
            break
        mid = (r.knee + r.first_fail) // 2
        if await measure(mid):
            r.knee = mid
        else:
            r.first_fail = mid


def run_jobs(setup: Setup, r: Result, args: argparse.Namespace) -> None:
    from client import JobsClient
    from client.jobs import STATUS_NAMES

    buf = io.BytesIO()
    sf.write(buf, test_audio(args.file_seconds, 16000), 16000, subtype="PCM_16", format="WAV")
    wav = buf.getvalue()
    pids = {"replicas": setup.replica_pids(), "haproxy": [setup.haproxy.pid],
            "workers": [w for rep in setup.replicas for w in worker_pids(rep.pid)]}
    before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
    with JobsClient(setup.target, setup.key, timeout=60) as jobs:
        t0 = time.monotonic()
        ids = [jobs.submit(io.BytesIO(wav), file_name=f"bench-{i}.wav").job_id for i in range(args.jobs)]
        last = t0
        for job_id in ids:
            done = jobs.wait(job_id, timeout=600, poll_s=0.05)
            if STATUS_NAMES[done.status] == "completed":
                r.jobs_done += 1
            else:
                r.jobs_failed += 1
            last = max(last, time.monotonic())
    r.job_wall_s = last - t0
    r.job_audio_s = r.jobs_done * args.file_seconds
    r.job_cpu = {k: (sum(cpu_seconds(p) for p in v) - before[k]) / r.job_wall_s for k, v in pids.items()}


# -- main -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: levels 2,4 of 2 s; 2 jobs of 5 s")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=list(DEFAULT_LEVELS),
                        help="stream counts tried in order until one fails (default %(default)s)")
    parser.add_argument("--bisect", type=int, default=2, help="bisection steps after the first failure")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--latency-ms", type=float, default=10.0,
                        help="added latency (at --quantile) a level must stay under (default 10)")
    parser.add_argument("--quantile", type=float, default=99.0,
                        help="which percentile of the added latency is held to --latency-ms (default 99; 50 asks "
                             "only that the replicas keep up with real time, which other work on a busy machine "
                             "disturbs far less than the tail)")
    parser.add_argument("--jobs", type=int, default=8, help="file jobs submitted at once")
    parser.add_argument("--file-seconds", type=float, default=60.0, help="audio seconds per job")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat both sizes, alternating their order; the summary takes medians")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="hard bound on the whole run")
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.bisect, args.seconds, args.warmup = [2, 4], 0, 2.0, 0.5
        args.jobs, args.file_seconds = 2, 5.0
        args.max_seconds = min(args.max_seconds, 150.0)
    if not (shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists()):
        print("haproxy is not installed (Debian: apt-get install haproxy)", file=sys.stderr)
        return 2
    install_watchdog(args.max_seconds)
    print_header("bench.replicas", "Scaling out: 1 vs 2 hushwire replicas behind HAProxy")
    print(f"stream levels {args.levels}, {args.seconds:g} s each after {args.warmup:g} s, up to {args.bisect} "
          f"bisection steps; {args.jobs} jobs of {args.file_seconds:g} s; nothing pinned; bound {args.max_seconds:g} s")
    deadline = time.monotonic() + args.max_seconds - min(30.0, 0.2 * args.max_seconds)
    requests = audio_requests(min(30.0, args.warmup + args.seconds + 1))
    results: list[Result] = []
    try:
        with temp_dir() as tmp:
            env = child_env()
            env["HUSHWIRE_SIGNING_SECRET"] = secrets.token_urlsafe(32)
            env["HUSHWIRE_KEY_PEPPER"] = secrets.token_urlsafe(32)
            stores = (f"sqlite://{tmp / 'shared' / 'hushwire.db'}", f"file://{tmp / 'shared' / 'blobs'}")
            key = create_key(tmp, stores, env)
            print("\nper level (as measured):")
            print("  " + " | ".join(LEVEL_HEADERS), flush=True)
            # Rounds alternate the order (1, 2, then 2, 1, ...), so a drift in the machine's other
            # load hits both sizes alike; the summary takes medians.
            order = [(rnd, n) for rnd in range(args.rounds) for n in ((1, 2) if rnd % 2 == 0 else (2, 1))]
            for i, (rnd, n) in enumerate(order):
                r = Result(n, rnd + 1)
                results.append(r)
                with Children() as children:
                    setup = start_setup(children, tmp / f"run{i}", n, stores, env, key)
                    share = time.monotonic() + (deadline - time.monotonic()) / (len(order) - i)
                    asyncio.run(knee(setup, r, args, requests, share - 20))
                    run_jobs(setup, r, args)
    except (BenchTimeout, KeyboardInterrupt) as exc:
        return stopped(exc)

    print("\nlevels measured:")
    print_table(["round", *LEVEL_HEADERS], [[r.round, *level_row(r, lv, cpu, args)] for r in results
                                           for lv, cpu in r.levels])
    rows = []
    for r in results:
        at = next(((lv, cpu) for lv, cpu in r.levels if lv.streams == r.knee), None)
        knee_text = f"≥ {r.knee}" if r.first_fail is None else str(r.knee)
        rows.append([r.round, r.replicas, knee_text, round(at[0].p(50), 2) if at else "–",
                     round(at[0].p(99), 2) if at else "–",
                     f"{100 * at[1]['replicas']:.0f} %" if at else "–",
                     f"{100 * at[1]['haproxy']:.0f} %" if at else "–",
                     f"{100 * at[1]['load-gen']:.0f} %" if at else "–", round(r.per_core(), 1),
                     f"{r.jobs_done}/{r.jobs_done + r.jobs_failed}", round(r.job_wall_s, 2), round(r.job_rate, 1),
                     f"{100 * r.job_cpu.get('workers', 0):.0f} %", f"{100 * r.job_cpu.get('replicas', 0):.0f} %",
                     f"{100 * r.job_cpu.get('haproxy', 0):.0f} %"])
    print(f"1 vs 2 replicas behind HAProxy (streams: 16 kHz mono PCM16, 20 ms chunks at real time, "
          f"p{args.quantile:g} added latency ≤ {args.latency_ms:g} ms, nothing dropped; jobs: {args.jobs} × "
          f"{args.file_seconds:g} s 16 kHz mono WAV at once, one worker per replica):")
    print_table(["round", "replicas", "stream knee", "p50 ms at knee", "p99 ms at knee", "replicas CPU at knee",
                 "HAProxy CPU at knee",
                 "load-gen CPU at knee", "streams per core of replica CPU", "jobs done", "jobs wall s",
                 "job audio s per wall s", "workers CPU", "replicas CPU (jobs)", "HAProxy CPU (jobs)"], rows)
    by = {n: [r for r in results if r.replicas == n] for n in (1, 2)}
    if all(by.values()):
        k1, k2 = (statistics.median(r.knee for r in by[n]) for n in (1, 2))
        j1, j2 = (statistics.median(r.job_rate for r in by[n]) for n in (1, 2))
        rounds = f" (medians of {args.rounds} rounds)" if args.rounds > 1 else ""
        knees = f"stream knee {k2:g} / {k1:g}" + (f" = × {k2 / k1:.2f}" if k1 else " (no passing level with 1)")
        jobs_ratio = f"job throughput {j2:.1f} / {j1:.1f} = × {j2 / j1:.2f}" if j1 > 0 else "job throughput: –"
        print(f"2 replicas / 1 replica{rounds}: {knees}; {jobs_ratio} "
              f"(on {os.cpu_count()} cores shared by the replicas, their workers, HAProxy and the load generator)")
    bad = sum(r.jobs_failed for r in results)
    return 1 if bad else 0


def create_key(tmp: Path, stores: tuple[str, str], env: dict[str, str]) -> str:
    (tmp / "keys").mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([*HUSHWIRE, "keys", "create", "--name", "bench", "--data-dir", str(tmp / "keys"),
                           "--database-url", stores[0], "--blob-url", stores[1]],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60, check=True)
    return proc.stdout.strip().splitlines()[-1]


if __name__ == "__main__":
    sys.exit(main())
