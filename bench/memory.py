"""Server memory: resident memory per open live stream, and a long file job in flat memory.

Streams: ``hushwire serve`` (one job worker) is warmed with two short streams, then its resident
memory (VmRSS from /proc/PID/status) is read with 0, then 100, then 200 open streams. Every
stream is 16 kHz mono PCM16 on its own connection, has sent its config and 1 s of audio in 20 ms
chunks (all answered), and stays open while the reading is taken. MiB per stream is the growth
over the idle reading divided by the number of streams. The streams are then closed and as many
opened again: RSS that grew past the first peak would be a leak.

File jobs: a 1-minute and then a 1-hour 16 kHz mono PCM16 WAV are submitted over gRPC
(``client.JobsClient``), and the job worker's VmRSS is sampled every ``--sample-ms`` while each
runs. Flat memory means the 1-hour peak is about the 1-minute peak, not 60 times the audio.

    python -m bench.memory            # about two minutes (writes a 115 MB WAV to a temp dir)
    python -m bench.memory --quick    # 10 and 20 streams, 5 s and 30 s files
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import soundfile as sf

from bench._common import (
    BenchTimeout,
    Children,
    create_key,
    install_watchdog,
    print_header,
    print_table,
    rss_mib,
    start_hushwire,
    stopped,
    temp_dir,
    test_audio,
    worker_pids,
)
from bench.streams import audio_requests, config_request, open_channels, open_stream

BYTES_PER_MIB = 1024 * 1024
SETTLE_S = 1.5  # after the streams are open, before reading RSS (the allocator and grpc settle)


async def _feed(call: grpc.aio.StreamStreamCall, requests: list[bytes], offset: int) -> None:
    """Send 1 s of audio, one chunk at a time, each answered before the next (not paced)."""
    for i in range(50):
        await call.write(requests[(offset + i) % len(requests)])
        if await call.read() is grpc.aio.EOF:
            raise RuntimeError("stream ended early")


async def stream_memory(target: str, key: str, pid: int, levels: list[int]) -> list[list[object]]:
    requests = audio_requests(10.0)
    config = config_request()
    held: list[tuple[grpc.aio.Channel, grpc.aio.StreamStreamCall]] = []

    async def add(n: int) -> None:
        channels = open_channels(target, n)
        calls = await asyncio.gather(*(open_stream(ch, key, config) for ch in channels))
        await asyncio.gather(*(_feed(c, requests, 37 * (len(held) + k)) for k, c in enumerate(calls)))
        held.extend(zip(channels, calls, strict=True))

    async def close_all() -> None:
        for _ch, call in held:
            await call.done_writing()
        for ch, call in held:
            while await call.read() is not grpc.aio.EOF:
                pass
            await ch.close()
        held.clear()

    # Warm-up: one-time allocations (grpc, numpy's FFT plans, the first denoiser) are not per stream.
    await add(2)
    await close_all()
    await asyncio.sleep(SETTLE_S)
    base = rss_mib(pid)
    rows: list[list[object]] = [[0, round(base, 1), "–", "–"]]
    prev_n, prev_rss = 0, base
    for n in levels:
        await add(n - len(held))
        await asyncio.sleep(SETTLE_S)
        rss = rss_mib(pid)
        rows.append([n, round(rss, 1), round((rss - base) / n, 3), round((rss - prev_rss) / (n - prev_n), 3)])
        prev_n, prev_rss = n, rss
    await close_all()
    await asyncio.sleep(SETTLE_S)
    rows.append([f"0 (after closing {prev_n})", round(rss_mib(pid), 1), "–", "–"])
    # Open as many again: a leak would grow RSS past the first peak; freed memory is reused instead.
    await add(prev_n)
    await asyncio.sleep(SETTLE_S)
    rss = rss_mib(pid)
    rows.append([f"{prev_n} (again)", round(rss, 1), round((rss - base) / prev_n, 3), "–"])
    await close_all()
    return rows


def write_wav(path: Path, seconds: float, rate: int = 16000) -> None:
    """A long 16 kHz PCM16 WAV written in blocks (never the whole signal in memory)."""
    block = test_audio(60.0, rate)
    total = int(seconds * rate)
    with sf.SoundFile(str(path), "w", rate, 1, "PCM_16", format="WAV") as f:
        written = 0
        while written < total:
            n = min(block.shape[0], total - written)
            f.write(block[:n])
            written += n


def job_memory(target: str, key: str, server_pid: int, path: Path, seconds: float, sample_s: float) -> list[object]:
    from client.jobs import FINISHED, STATUS_NAMES, JobsClient

    workers = worker_pids(server_pid)
    idle = max((rss_mib(p) for p in workers), default=float("nan"))
    samples: list[tuple[float, float]] = []  # (progress, worker RSS MiB)
    with JobsClient(target, key, timeout=600) as jobs:
        t0 = time.perf_counter()
        job = jobs.submit(path)
        uploaded = time.perf_counter() - t0
        stop = threading.Event()
        progress = [0.0]

        def sample() -> None:
            while not stop.is_set():
                rss = max((rss_mib(p) for p in worker_pids(server_pid)), default=float("nan"))
                samples.append((progress[0], rss))
                stop.wait(sample_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            while True:
                job = jobs.get(job.job_id)
                progress[0] = job.progress
                if job.status in FINISHED:
                    break
                time.sleep(0.2)
        finally:
            stop.set()
            sampler.join()
        done = time.perf_counter() - t0
    if STATUS_NAMES[job.status] != "completed":
        raise RuntimeError(f"the job ended {STATUS_NAMES[job.status]}: {job.error.code} {job.error.msg}")
    rss = np.array([s[1] for s in samples])
    prog = np.array([s[0] for s in samples])

    def at(fraction: float) -> str:
        idx = np.nonzero(prog >= fraction)[0]
        return f"{rss[idx[0]]:.1f}" if idx.size else "–"

    label = (f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min" if seconds >= 60
             else f"{seconds:g} s")
    return [label, f"{path.stat().st_size / BYTES_PER_MIB:.1f}", f"{idle:.1f}", at(0.25), at(0.5), at(0.75),
            f"{np.nanmax(rss):.1f}" if rss.size else "–", len(samples), f"{uploaded:.1f}",
            f"{seconds / max(done - uploaded, 1e-9):.0f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10/20 streams, 5 s and 30 s files")
    parser.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=[100, 200])
    parser.add_argument("--short-seconds", type=float, default=60.0)
    parser.add_argument("--long-seconds", type=float, default=3600.0)
    parser.add_argument("--sample-ms", type=float, default=100.0, help="worker RSS sampling period")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="hard bound on the whole run")
    args = parser.parse_args(argv)
    if args.quick:
        args.streams, args.short_seconds, args.long_seconds = [10, 20], 5.0, 30.0
        args.max_seconds = min(args.max_seconds, 120.0)
    install_watchdog(args.max_seconds)
    print_header("bench.memory", "Server memory: per live stream, and file jobs")
    try:
        with Children() as children, temp_dir() as tmp:
            data = tmp / "data"
            srv = start_hushwire(children, data, "--max-streams-per-user", "100000", "--live-cpu-budget", "0")
            key = create_key(data)
            rows = asyncio.run(stream_memory(srv.target, key, srv.pid, sorted(args.streams)))
            print(f"hushwire serve (pid {srv.pid}) VmRSS with open 16 kHz mono streams, each after 1 s of audio:")
            print_table(["open streams", "server RSS MiB", "MiB per stream (vs 0)", "MiB per stream (vs previous)"],
                        rows)
            per_stream = rows[len(args.streams)][2]
            target_ok = isinstance(per_stream, float) and per_stream <= 1.0
            print(f"target ≤ 1 MiB per stream: {'met' if target_ok else 'MISSED'} ({per_stream} MiB at "
                  f"{args.streams[-1]} streams)")

            job_rows = []
            for seconds in (args.short_seconds, args.long_seconds):
                path = tmp / f"job-{seconds:g}s.wav"
                write_wav(path, seconds)
                job_rows.append(job_memory(srv.target, key, srv.pid, path, seconds, args.sample_ms / 1000))
                path.unlink()
            print(f"job worker VmRSS while a 16 kHz mono PCM16 WAV is denoised (sampled every {args.sample_ms:g} ms; "
                  "one worker, reused):")
            print_table(["file", "MiB", "worker RSS idle", "at 25 %", "at 50 %", "at 75 %", "peak", "samples",
                         "upload s", "× real time (upload end → seen completed)"], job_rows)
            short_peak, long_peak = float(job_rows[0][6]), float(job_rows[1][6])
            print(f"peak RSS long / short = {long_peak:.1f} / {short_peak:.1f} MiB = {long_peak / short_peak:.2f}×"
                  f" for {args.long_seconds / args.short_seconds:g}× the audio")
    except (BenchTimeout, KeyboardInterrupt) as exc:
        return stopped(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
