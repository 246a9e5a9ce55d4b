"""Denoiser cost on one core: µs per 10 ms hop, real-time factor, and file-job throughput.

Per-hop cost is measured on ``server.dsp.Denoiser`` fed in three chunkings: one hop (10 ms) per
``process`` call, the live stream's 20 ms chunks, and the job path's 1 s blocks; on
``server.streams.StreamSession`` (PCM16 bytes in and out); stage by stage; and for N live
streams batched through one ``DenoiserPool`` (what the server does per event-loop turn).
The real-time factor is cost / audio duration; "× real time" is its inverse. Each figure is the
median of ``--repeats`` runs of ``--seconds`` of audio.

File-job throughput runs the real job path: ``server.jobs.run_job`` on a real SQLite store and
blob directory (decode, denoise, encode, progress writes, commit), for a 16 kHz PCM16 WAV.

This process pins itself to ``--cpu`` (one core), and numpy's BLAS is kept to one thread.

    python -m bench.denoiser             # about a minute
    python -m bench.denoiser --quick
    python -m bench.denoiser --profile-out /tmp/denoiser.txt   # plus a py-spy profile of the hop loop
    python -m bench.denoiser --baseline main~3 [--rounds 5]     # this tree against another commit

``--baseline REF`` checks REF out in a temporary git worktree and measures both denoisers in the
same run, alternating between them round by round (``bench/_dsp_cost.py`` in a child process per
tree and round, pinned to the same core): the batched live path at 16 and 48 kHz and the job path.
It prints each side's median and the ratio current / baseline, which is what to quote on a shared
machine (absolute figures drift with the load; a ratio of interleaved rounds much less).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402 (the thread limits must be set before numpy loads)
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from bench._common import (  # noqa: E402
    BenchTimeout,
    install_watchdog,
    pin_self,
    print_header,
    print_profile,
    print_table,
    py_spy_record,
    stopped,
    temp_dir,
    test_audio,
)
from hushwire.contract import pcm  # noqa: E402
from server.dsp import Denoiser, DenoiserPool  # noqa: E402
from server.streams import StreamSession  # noqa: E402

HOP_MS = 10.0
CONFIGS = [(16000, 1), (48000, 1), (16000, 8), (48000, 8)]


def _frames(seconds: float, rate: int, channels: int) -> np.ndarray:
    mono = test_audio(seconds, rate)
    # Different material per channel (shifted), so no channel is a copy of another.
    return np.stack([np.roll(mono, 9973 * c) for c in range(channels)], axis=1)


def hop_cost(rate: int, channels: int, chunk_ms: float, seconds: float, repeats: int) -> list[float]:
    """Seconds of CPU per 10 ms hop for each repeat, feeding ``chunk_ms`` chunks."""
    x = _frames(seconds, rate, channels)
    hop = round(rate * HOP_MS / 1000)
    chunk = max(hop, round(rate * chunk_ms / 1000))
    chunks = [x[i : i + chunk] for i in range(0, x.shape[0] - chunk + 1, chunk)]
    n_hops = len(chunks) * chunk // hop
    out: list[float] = []
    for _ in range(repeats):
        den = Denoiser(rate, channels)
        den.process(chunks[0])  # first call: leave one-time costs out
        t0 = time.process_time()
        for c in chunks:
            den.process(c)
        out.append((time.process_time() - t0) / n_hops)
    return out


def session_cost(rate: int, chunk_ms: float, seconds: float, repeats: int) -> list[float]:
    """Seconds per 10 ms hop through ``StreamSession.process`` (PCM16 bytes in and out), mono."""
    x = _frames(seconds, rate, 1)
    data = pcm.encode(x, pcm.PCM16)
    step = round(rate * chunk_ms / 1000) * 2
    chunks = [data[i : i + step] for i in range(0, len(data) - step + 1, step)]
    n_hops = len(chunks) * chunk_ms / HOP_MS
    out: list[float] = []
    for _ in range(repeats):
        session = StreamSession(rate, 1, pcm.PCM16)
        session.process(chunks[0])
        t0 = time.process_time()
        for c in chunks:
            session.process(c)
        out.append((time.process_time() - t0) / n_hops)
    return out


def components(rate: int, hops_per_call: int, hops: int, repeats: int) -> list[tuple[str, float]]:
    """µs per hop of each stage of the denoiser's batch step (``_Engine.run``), mono, on realistic state.

    ``hops_per_call`` hops go through each stage per call: 1 is the live path of one stream,
    100 the job path's 1 s blocks. Stage internals are private: this follows server/dsp.
    """
    from server.dsp.denoiser import _engine

    engine = _engine(rate, True)
    hop = engine.hop
    x = _frames(hops * hop / rate + 0.5, rate, 1)[:, 0]
    state: dict[str, np.ndarray] = {}
    engine.init_state(state, 1)
    engine.run(state, x[None, : 50 * hop].astype(np.float64))  # leave the start-up phase
    calls = max(1, hops // hops_per_call)
    blocks = [x[None, i * hops_per_call * hop : (i + 1) * hops_per_call * hop].astype(np.float64) for i in range(calls)]
    spec, _ = engine.stft.analyze(state, blocks[0])
    power = np.abs(spec) ** 2
    noise_psd = engine.noise.run(state, power)
    gain, _, _ = engine.gain_rule.run(state, power, noise_psd)
    model = engine.model
    stages: list[tuple[str, object]] = [
        ("Stft.analyze (framing, window, rfft)", lambda i: engine.stft.analyze(state, blocks[i])),
        ("NoiseTracker.run (recursive per hop)", lambda i: engine.noise.run(state, power)),
        ("OmLsaGain.run (DD recursion per hop + gain)", lambda i: engine.gain_rule.run(state, power, noise_psd)),
    ]
    if model is not None:
        stages.append(("GainModel.run (features, dense, 2 GRUs per hop, gains, VAD)",
                       lambda i: model.run(state, power)))
    stages += [
        ("Stft.synthesize (irfft, overlap-add)", lambda i: engine.stft.synthesize(state, spec * gain)),
        ("_Engine.run (all of the above + power, products, floor)", lambda i: engine.run(state, blocks[i])),
    ]
    rows = []
    for name, fn in stages:
        runs = []
        for _ in range(repeats):
            t0 = time.process_time()
            for i in range(calls):
                fn(i)  # type: ignore[operator]
            runs.append((time.process_time() - t0) / (calls * hops_per_call))
        rows.append((name, statistics.median(runs)))
    return rows


def pool_cost(rate: int, streams: int, seconds: float, repeats: int) -> list[float]:
    """CPU seconds per stream-hop when ``streams`` mono streams' 20 ms chunks go through one
    ``DenoiserPool.process_many`` call per tick (what the server does when they arrive together)."""
    x = _frames(seconds, rate, 1)
    chunk = round(rate * 0.02)
    hops_per_chunk = round(20.0 / HOP_MS)
    ticks = x.shape[0] // chunk
    out: list[float] = []
    for _ in range(repeats):
        pool = DenoiserPool(rate)
        dens = [Denoiser(rate, pool=pool) for _ in range(streams)]
        offsets = [(9973 * k) % max(1, x.shape[0] - chunk) for k in range(streams)]  # different audio per stream
        pool.process_many([(d, x[:chunk]) for d in dens])
        t0 = time.process_time()
        for t in range(ticks):
            pool.process_many([(d, _wrap(x, o + t * chunk, chunk)) for d, o in zip(dens, offsets, strict=True)])
        out.append((time.process_time() - t0) / (ticks * hops_per_chunk * streams))
    return out


def _wrap(x: np.ndarray, start: int, n: int) -> np.ndarray:
    start %= x.shape[0] - n
    return x[start : start + n]


def job_throughput(seconds: float, repeats: int, tmp: Path) -> list[tuple[float, float]]:
    """(audio s per wall s, audio s per CPU s) of ``server.jobs.run_job`` on a 16 kHz PCM16 WAV."""
    from server.blobs import LocalBlobs
    from server.jobs import Outcome, new_job_id, run_job
    from server.store import PENDING, JobRow, Store

    rate = 16000
    store_path = tmp / "hushwire.sqlite3"
    store = Store(store_path, b"bench pepper")  # a pepper only to make the job's owner key
    blobs = LocalBlobs(tmp / "blobs")
    uid = store.create_user("bench")
    key_id, _ = store.create_key(uid)
    x = _frames(seconds, rate, 1)
    results = []
    for _ in range(repeats):
        job_id = new_job_id()
        upload = f"uploads/{job_id}"
        with blobs.writer(upload) as f:
            sf.write(f, x, rate, subtype="PCM_16", format="WAV")
        now = time.time()
        store.create_job(JobRow(
            job_id=job_id, uid=uid, key_id=key_id, status=PENDING, progress=0.0, held=False, file_name="bench.wav",
            file_key="file", attenuation_limit_db=None, created_at=now, mod_time=now, format="WAV",
            subtype="PCM_16", sample_rate=rate, channels=1, frames=x.shape[0],
            upload_bytes=blobs.size(upload), upload_blob=upload))
        owner = "bench"
        claimed = store.claim_next(owner, 60.0, 3)
        assert claimed is not None and claimed.job_id == job_id
        w0, c0 = time.perf_counter(), time.process_time()
        result = run_job(str(store_path), blobs.url, str(tmp), job_id, owner, 60.0)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if result.outcome is not Outcome.COMPLETED:
            raise RuntimeError(f"run_job returned {result}: {store.get_job(job_id)}")
        results.append((seconds / wall, seconds / cpu))
        store.delete_job(job_id)
    store.close()
    return results


BASELINE_LOADS = "16000:1,16000:10,16000:50,48000:1,48000:10"
ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def compare_baseline(ref: str, rounds: int, seconds: float, tmp: Path) -> list[list[object]]:
    """Rows of (load, baseline ms per stream-second, current, ratio) from ``rounds`` interleaved rounds."""
    commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    tree = tmp / "baseline"
    _git("worktree", "add", "--detach", str(tree), commit)
    try:
        audio = tmp / "audio.npy"
        np.save(audio, test_audio(20.0, 48000).astype(np.float32))
        script = Path(__file__).with_name("_dsp_cost.py")
        results: dict[str, list[dict[str, float]]] = {"baseline": [], "current": []}
        for r in range(rounds):
            order = [("baseline", tree), ("current", ROOT)]
            if r % 2:
                order.reverse()  # neither side always runs first
            for side, root in order:
                env = {**os.environ, "PYTHONPATH": str(root)}
                out = subprocess.run([sys.executable, str(script), str(audio), BASELINE_LOADS, str(seconds)],
                                     env=env, check=True, capture_output=True, text=True, timeout=600).stdout
                results[side].append(json.loads(out.strip().splitlines()[-1]))
    finally:
        _git("worktree", "remove", "--force", str(tree))
    rows: list[list[object]] = []
    for key in results["current"][0]:
        base = statistics.median(x[key] for x in results["baseline"])
        cur = statistics.median(x[key] for x in results["current"])
        ratios = sorted(c[key] / b[key] for b, c in zip(results["baseline"], results["current"], strict=True))
        if key == "job":
            label = "job path, 16 kHz mono, 1 s blocks"
        else:
            rate, streams = key.split(":")
            label = f"live, {int(rate) // 1000} kHz, {streams} stream{'s' if streams != '1' else ''} per batch"
        rows.append([label, f"{base * 1000:.2f}", f"{cur * 1000:.2f}", f"{cur / base:.2f}",
                     f"{ratios[0]:.2f}-{ratios[-1]:.2f}"])
    return rows


def profile_hops(out: Path, seconds: float) -> None:
    """py-spy on this process while it runs 16 kHz mono hops for ``seconds``."""
    spy = py_spy_record(os.getpid(), out, seconds)
    x = _frames(10.0, 16000, 1)
    hop = 160
    den = Denoiser(16000, 1)
    end = time.monotonic() + seconds + 0.5
    while time.monotonic() < end:
        for i in range(0, x.shape[0] - hop + 1, hop):
            den.process(x[i : i + hop])
    _, err = spy.communicate(timeout=seconds + 30)
    if spy.returncode != 0:
        print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
    print_profile(out, "Denoiser.process, 16 kHz mono, one hop per call")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (0.5 s of audio, one repeat)")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per repeat for the hop costs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--job-seconds", type=float, default=120.0, help="length of the file for run_job")
    parser.add_argument("--job-repeats", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=0, help="core to pin this process to (-1: none)")
    parser.add_argument("--profile-out", default=None, help="also profile the 16 kHz hop loop with py-spy")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="hard bound on the whole run")
    parser.add_argument("--baseline", metavar="REF", default=None,
                        help="only compare this tree's denoiser cost with the one at git REF (see above)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per side for --baseline")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.repeats, args.job_seconds, args.job_repeats = 0.5, 1, 2.0, 1
        args.max_seconds = min(args.max_seconds, 120.0)
        args.profile_seconds = min(args.profile_seconds, 2.0)
    install_watchdog(args.max_seconds)
    if args.cpu >= 0 and args.cpu in os.sched_getaffinity(0):
        pin_self(args.cpu)
    print_header("bench.denoiser", "Denoiser cost on one core")
    if args.baseline is not None:
        seconds = min(args.seconds, 4.0)
        print(f"pinned to core(s) {sorted(os.sched_getaffinity(0))}; CPU time (process_time) in ms per "
              f"stream-second, median of {args.rounds} interleaved rounds of {seconds:g} s per load and side; "
              f"baseline: {args.baseline} ({_git('rev-parse', '--short', args.baseline)})")
        try:
            with temp_dir() as tmp:
                rows = compare_baseline(args.baseline, args.rounds, seconds, tmp)
        except (BenchTimeout, KeyboardInterrupt) as exc:
            return stopped(exc)
        print_table(["load", "baseline ms CPU per s", "this tree ms CPU per s", "ratio", "ratio range over rounds"],
                    rows)
        return 0
    print(f"pinned to core(s) {sorted(os.sched_getaffinity(0))}; CPU time (process_time) per hop, "
          f"median of {args.repeats} × {args.seconds:g} s of audio")
    try:
        rows = []
        for rate, channels in CONFIGS:
            for chunk_ms, label in ((HOP_MS, "10 ms (one hop)"), (20.0, "20 ms (stream)"), (1000.0, "1 s (job)")):
                if chunk_ms == 1000.0 and args.seconds < 2:
                    continue
                cost = statistics.median(hop_cost(rate, channels, chunk_ms, args.seconds, args.repeats))
                rows.append([f"Denoiser {rate // 1000} kHz × {channels} ch", label, round(cost * 1e6, 1),
                             round(cost * 1e6 / channels, 1), f"{cost / (HOP_MS / 1000):.4f}",
                             f"{HOP_MS / 1000 / cost:.0f}×"])
            if channels == 1:
                cost = statistics.median(session_cost(rate, 20.0, args.seconds, args.repeats))
                rows.append([f"StreamSession {rate // 1000} kHz PCM16", "20 ms (stream)", round(cost * 1e6, 1),
                             round(cost * 1e6, 1), f"{cost / (HOP_MS / 1000):.4f}", f"{HOP_MS / 1000 / cost:.0f}×"])
        print_table(["what", "chunk", "µs per hop", "µs per hop per channel", "real-time factor",
                     "× real time (one core)"], rows)

        hops = max(200, int(args.seconds * 100))
        print("where a hop's time goes (each stage timed alone on realistic state, 16 kHz mono; one hop per call "
              "is the live path of a single stream, 100 hops per call the job path's 1 s blocks):")
        parts = {(rate, per_call): components(rate, per_call, hops, args.repeats)
                 for rate in (16000, 48000) for per_call in (1, 100)}
        names = [n for n, _ in parts[(16000, 1)]]
        print_table(["stage", "16 kHz, 1 hop/call", "16 kHz, 100 hops/call", "48 kHz, 1 hop/call",
                     "48 kHz, 100 hops/call"],
                    [[n, *(round(parts[key][i][1] * 1e6, 1) for key in parts)] for i, n in enumerate(names)])

        print("live streams batched: N mono 20 ms streams through one DenoiserPool.process_many call per tick "
              "(what the server does with the chunks that arrive in the same event-loop turn)")
        prow = []
        for rate in (16000, 48000):
            for streams in (1, 10, 50, 100) if not args.quick else (1, 10):
                cost = statistics.median(pool_cost(rate, streams, min(args.seconds, 2.0), args.repeats))
                prow.append([f"{rate // 1000} kHz", streams, round(cost * 1e6, 1), f"{HOP_MS / 1000 / cost:.0f}",
                             f"{cost * 100 * 1000:.1f}"])
        print_table(["rate", "streams per batch", "µs per stream-hop", "streams per core (DSP only)",
                     "CPU ms per stream-second"], prow)

        with temp_dir() as tmp:
            runs = job_throughput(args.job_seconds, args.job_repeats, tmp)
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(f"file job: server.jobs.run_job, {args.job_seconds:g} s 16 kHz mono PCM16 WAV → WAV, "
              f"real SQLite store + blob dir, median of {len(runs)}")
        print_table(["path", "audio s per wall s", "audio s per CPU s", "target ≥ 100× (stretch 200×)"],
                    [["run_job 16 kHz mono", f"{wall:.0f}", f"{cpu:.0f}",
                      "stretch met" if wall >= 200 else "met" if wall >= 100 else f"MISSED ({wall / 100:.0%} of it)"]])
        if args.profile_out:
            profile_hops(Path(args.profile_out), args.profile_seconds)
    except (BenchTimeout, KeyboardInterrupt) as exc:
        return stopped(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
