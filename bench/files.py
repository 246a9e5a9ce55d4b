"""End-to-end file jobs through the REST gateway: uploads per second and upload-to-completed time.

``hushwire serve`` (``--workers`` job workers) and ``hushwire gateway`` run on loopback; this
process runs ``--clients`` concurrent httpx clients (asyncio). Each client loops: ``POST /enhance``
with one 5 s 16 kHz mono PCM16 WAV (multipart), then ``GET /stat/jobs/<id>`` every ``--poll-ms``
until the job is ``completed``, then the next upload. Nothing is pinned: server, workers, gateway
and clients share the machine, as they would on one small host.

Requests per second counts the uploads accepted (200 from ``POST /enhance``) in the measured
window; jobs per second counts the jobs seen ``completed`` in it. The upload-to-completed time
runs from sending the POST to the poll that saw ``completed``, so it includes up to one poll period.

    python -m bench.files             # 30 s measured
    python -m bench.files --quick
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import time
from dataclasses import dataclass, field

import httpx
import soundfile as sf

from bench._common import (
    BenchTimeout,
    Children,
    cpu_seconds,
    create_key,
    install_watchdog,
    percentile,
    print_header,
    print_table,
    start_gateway,
    start_hushwire,
    stopped,
    temp_dir,
    test_audio,
    worker_pids,
)


@dataclass
class Stats:
    uploads: list[tuple[float, float]] = field(default_factory=list)  # (sent at, POST seconds)
    done: list[tuple[float, float]] = field(default_factory=list)  # (completed at, upload-to-completed s)
    polls: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def client_loop(http: httpx.AsyncClient, key: str, wav: bytes, stop_at: float, poll_s: float,
                      stats: Stats) -> None:
    headers = {"Authorization": key}
    n = 0
    while time.monotonic() < stop_at:
        n += 1
        t0 = time.monotonic()
        try:
            r = await http.post("/enhance", headers=headers, files={"file": (f"bench-{n}.wav", wav, "audio/wav")})
        except httpx.HTTPError as exc:
            stats.error(type(exc).__name__)
            await asyncio.sleep(0.1)
            continue
        t_up = time.monotonic()
        if r.status_code != 200:
            stats.error(f"POST {r.status_code} {r.text[:80]}")
            await asyncio.sleep(0.1)
            continue
        stats.uploads.append((t0, t_up - t0))
        job_id = r.json()["file"]
        while True:
            await asyncio.sleep(poll_s)
            s = await http.get(f"/stat/jobs/{job_id}", headers=headers)
            stats.polls += 1
            status = s.json().get("job_status") if s.status_code == 200 else f"GET {s.status_code}"
            if status == "completed":
                now = time.monotonic()
                stats.done.append((now, now - t0))
                break
            if status not in ("pending", "pre-processing", "processing", "post-processing"):
                stats.error(f"job {status}")
                break
            if time.monotonic() > stop_at + 120:
                stats.error("job not completed 120 s after the end")
                break


async def run(url: str, key: str, clients: int, seconds: float, warmup: float, poll_s: float,
              pids: dict[str, int], file_seconds: float) -> tuple[Stats, float, float, dict[str, float]]:
    buf = io.BytesIO()
    sf.write(buf, test_audio(file_seconds, 16000), 16000, subtype="PCM_16", format="WAV")
    wav = buf.getvalue()
    stats = Stats()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, trust_env=False, limits=limits) as http:
        start = time.monotonic()
        window = (start + warmup, start + warmup + seconds)
        cpu0: dict[str, float] = {}

        async def meter() -> None:
            await asyncio.sleep(warmup)
            cpu0.update({name: cpu_seconds(pid) for name, pid in pids.items()}, load=time.process_time())
            await asyncio.sleep(seconds)
            for name, pid in pids.items():
                cpu0[name] = (cpu_seconds(pid) - cpu0[name]) / seconds
            cpu0["load"] = (time.process_time() - cpu0["load"]) / seconds

        await asyncio.gather(meter(), *(client_loop(http, key, wav, window[1], poll_s, stats)
                                        for _ in range(clients)))
    return stats, *window, cpu0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 clients, 3 s")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--file-seconds", type=float, default=5.0)
    parser.add_argument("--poll-ms", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server job workers")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="hard bound on the whole run")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.seconds, args.warmup = 2, 3.0, 0.5
        args.max_seconds = min(args.max_seconds, 120.0)
    install_watchdog(args.max_seconds)
    print_header("bench.files", "End-to-end file jobs through the REST gateway")
    try:
        with Children() as children, temp_dir() as tmp:
            data = tmp / "data"
            srv = start_hushwire(children, data, "--max-queued-jobs-per-user", "10000", workers=args.workers)
            gw = start_gateway(children, tmp, srv.target)
            key = create_key(data)
            pids = {"server": srv.pid, "gateway": gw.pid}
            pids.update({f"worker{i}": pid for i, pid in enumerate(worker_pids(srv.pid))})
            stats, w0, w1, cpu = asyncio.run(run(gw.url, key, args.clients, args.seconds, args.warmup,
                                                 args.poll_ms / 1000, pids, args.file_seconds))
    except (BenchTimeout, KeyboardInterrupt) as exc:
        return stopped(exc)
    span = w1 - w0
    uploads_in = [u for u in stats.uploads if w0 <= u[0] < w1]
    done_in = [d for d in stats.done if w0 <= d[0] < w1]
    post_s = [u[1] for u in stats.uploads]
    total_s = [d[1] for d in stats.done]
    print(f"{args.clients} clients, {args.file_seconds:g} s 16 kHz mono PCM16 WAV per upload, {args.workers} job "
          f"worker(s), poll every {args.poll_ms:g} ms, {args.seconds:g} s measured after {args.warmup:g} s")
    print_table(
        ["clients", "uploads/s (POST /enhance)", "jobs completed/s", "audio s per wall s", "POST p50 ms",
         "POST p95 ms", "upload→completed p50 ms", "p95 ms", "jobs", "errors", "CPU server", "CPU workers",
         "CPU gateway", "CPU load-gen"],
        [[args.clients, round(len(uploads_in) / span, 1), round(len(done_in) / span, 1),
          round(len(done_in) * args.file_seconds / span), round(1000 * percentile(post_s, 50)),
          round(1000 * percentile(post_s, 95)), round(1000 * percentile(total_s, 50)),
          round(1000 * percentile(total_s, 95)), len(stats.done), sum(stats.errors.values()) or 0,
          f"{100 * cpu.get('server', 0):.0f} %",
          f"{100 * sum(v for k, v in cpu.items() if k.startswith('worker')):.0f} %",
          f"{100 * cpu.get('gateway', 0):.0f} %",
          f"{100 * cpu.get('load', 0):.0f} %"]])
    if stats.errors:
        print("errors:", stats.errors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
