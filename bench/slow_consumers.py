"""Clients that never read: does the server end their streams, and does its memory come back?

Each client opens its own connection (with ``--shared``, all calls share one connection, as the
gateway's calls do), sends a config and then 1 s chunks of 16 kHz float32 audio as fast as grpc
takes them, and never reads a response (issue #18: such a stream's SLOW_CONSUMER
status queued behind the unread responses and the call never ended). Per round, all clients start at
once; the round ends when every call has ended (the client sees its status, without reading) or after
``--wait`` seconds. The server's VmRSS is read before the first round, at each round's peak and one
second after every call ended (or ``--wait`` passed) while the clients are still connected, with
``hushwire_streams_open`` then, and once more after the clients have left.

    python -m bench.slow_consumers                              # 24 clients, 2 rounds, default settings
    python -m bench.slow_consumers --clients 10 --rounds 4 -- --slow-consumer-seconds 2
    python -m bench.slow_consumers --server-root ../old-checkout   # the server of another checkout
    python -m bench.slow_consumers --quick                      # 3 clients, 1 round, 2 s slow-consumer
    python -m bench.slow_consumers --shared                     # every call on one connection

Arguments after ``--`` go to ``hushwire serve``. ``--server-root`` runs ``python -m cli serve``
(``python -m server.cli serve`` in checkouts from before the CLI left the server) in another checkout
of the repository (e.g. a ``git worktree`` of an older commit), to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from bench._common import (
    _LISTENING,
    HUSHWIRE,
    ROOT,
    BenchTimeout,
    child_env,
    free_port,
    install_watchdog,
    print_header,
    print_table,
    rss_mib,
    stopped,
    temp_dir,
)
from hushwire.v1 import enhancer_pb2, enhancer_pb2_grpc

RATE_HZ = 16000
SHARED = False   # --shared: every call on one connection


def _config() -> enhancer_pb2.StreamEnhanceRequest:
    return enhancer_pb2.StreamEnhanceRequest(config=enhancer_pb2.StreamConfig(
        sample_rate_hz=RATE_HZ, channels=1, encoding=enhancer_pb2.SAMPLE_ENCODING_FLOAT32))


AUDIO = enhancer_pb2.StreamEnhanceRequest(audio=np.zeros(RATE_HZ, np.float32).tobytes())


async def never_reading(target: str | grpc.aio.Channel, key: str, wait_s: float) -> tuple[str, float | None]:
    """One client (on its own connection to ``target``, or a call on the shared ``target`` channel);
    returns the call's final code as the client saw it (or "open") and how long after the call opened
    it ended. (Not after the last write: a write still pending when the stream is reset can complete.)"""
    if isinstance(target, grpc.aio.Channel):
        return await _never_reading_call(target, key, wait_s)
    async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        return await _never_reading_call(ch, key, wait_s)


async def _never_reading_call(ch: grpc.aio.Channel, key: str, wait_s: float) -> tuple[str, float | None]:
    opened = time.monotonic()
    call = enhancer_pb2_grpc.EnhancerStub(ch).StreamEnhance(metadata=(("authorization", key),))

    async def flood() -> None:
        with contextlib.suppress(Exception):   # the writes fail once the call has ended
            await call.write(_config())
            while True:
                await call.write(AUDIO)

    writer = asyncio.create_task(flood())
    try:
        code = await asyncio.wait_for(call.code(), wait_s)
        return code.name, time.monotonic() - opened
    except TimeoutError:
        return "open", None
    finally:
        writer.cancel()
        call.cancel()


def _streams_open(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("hushwire_streams_open "))


async def one_round(target: str, key: str, pid: int, clients: int, wait_s: float,
                    metrics_port: int) -> tuple[list[tuple[str, float | None]], float, float, float]:
    """All clients at once. Returns their outcomes, the peak RSS, and the RSS and open-stream gauge when
    every call had ended or ``wait_s`` had passed, whichever came first (the clients still connected)."""
    shared = grpc.aio.insecure_channel(target) if SHARED else None
    tasks = [asyncio.create_task(never_reading(shared or target, key, wait_s + 5)) for _ in range(clients)]
    peak = 0.0
    started = time.monotonic()
    while not all(t.done() for t in tasks) and time.monotonic() - started < wait_s:
        peak = max(peak, rss_mib(pid))
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)   # the allocator and grpc settle
    held_rss, held_open = rss_mib(pid), _streams_open(metrics_port)
    ends = [await t for t in tasks]
    if shared is not None:
        await shared.close()
    return ends, peak, held_rss, held_open


def _wait_listening(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = _LISTENING.search(log_path.read_text(errors="replace"))
        if m:
            return int(m.group(2))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError("the server did not report 'listening on':\n" + log_path.read_text(errors="replace")[-3000:])


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    serve_args: list[str] = []
    if "--" in args_in:
        i = args_in.index("--")
        args_in, serve_args = args_in[:i], args_in[i + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--wait", type=float, default=60.0, help="seconds a round waits for the calls to end")
    parser.add_argument("--server-root", type=Path, default=None, help="run the server of this checkout")
    parser.add_argument("--quick", action="store_true", help="3 clients, 1 round, a 2 s slow-consumer setting")
    parser.add_argument("--shared", action="store_true", help="every call on one connection")
    args = parser.parse_args(args_in)
    global SHARED
    SHARED = args.shared
    if args.quick:
        args.clients, args.rounds = 3, 1
        serve_args = ["--slow-consumer-seconds", "2", *serve_args]
    install_watchdog(args.rounds * (args.wait + 30) + 120)
    print_header("bench.slow_consumers", f"{args.clients} clients that never read, {args.rounds} round(s)"
                 + (", one shared connection" if args.shared else ""))
    root = (args.server_root or ROOT).resolve()
    hushwire = HUSHWIRE if (root / "cli" / "main.py").is_file() else [sys.executable, "-m", "server.cli"]
    try:
        with temp_dir() as tmp:
            metrics_port = free_port()
            key = subprocess.run([*hushwire, "keys", "create", "--data-dir", str(tmp)], cwd=root, check=True,
                                 capture_output=True, text=True, env=child_env()).stdout.strip().splitlines()[-1]
            argv_ = [*hushwire, "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(tmp),
                     "--workers", "1", "--metrics-port", str(metrics_port),
                     "--max-streams-per-user", str(args.clients + 1), *serve_args]
            log_path = tmp / "server.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(argv_, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=child_env())
            try:
                port = _wait_listening(proc, log_path)
                target = f"127.0.0.1:{port}"
                before = rss_mib(proc.pid)
                rows = []
                for r in range(args.rounds):
                    ends, peak, held_rss, held_open = asyncio.run(
                        one_round(target, key, proc.pid, args.clients, args.wait, metrics_port))
                    ended = [t for code, t in ends if code != "open" and t is not None]
                    rows.append([r + 1, f"{len(ended)}/{args.clients}", f"{max(ended):.1f}" if ended else "-",
                                 f"{before:.0f}", f"{peak:.0f}", f"{held_rss:.0f}", f"{held_open:.0f}",
                                 f"{rss_mib(proc.pid):.0f}"])
                print_table(["round", "calls ended", "max s from open to end", "RSS before (MiB)", "peak",
                             "RSS, clients still there", "streams_open then", "RSS after they left"], rows)
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    except (BenchTimeout, KeyboardInterrupt) as exc:
        return stopped(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
