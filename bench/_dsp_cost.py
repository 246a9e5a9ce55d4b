"""One round of the denoiser's batched cost, for ``bench.denoiser --baseline`` (run as a script).

    python bench/_dsp_cost.py AUDIO.npy RATE:STREAMS[,RATE:STREAMS...] SECONDS

Imports only ``server.dsp`` (whichever tree ``PYTHONPATH`` puts first) and numpy, so the same
script measures the current tree and a baseline built from another commit. Prints one JSON object:
``{"RATE:STREAMS": CPU seconds per stream-second, ..., "job": CPU seconds per audio second}``,
where ``RATE:STREAMS`` is the live path (20 ms chunks of ``STREAMS`` mono streams through one
``DenoiserPool.process_many`` call per tick) and ``job`` the job path (1 s blocks, 16 kHz mono).
``AUDIO.npy`` holds mono float32 audio at 48 kHz; lower rates take every k-th sample of it
(aliasing is harmless for a cost measurement).
"""

from __future__ import annotations

import json
import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from server.dsp import Denoiser, DenoiserPool  # noqa: E402


def _audio(base: np.ndarray, rate: int) -> np.ndarray:
    step = {8000: 6, 16000: 3, 24000: 2, 48000: 1}[rate]
    return np.ascontiguousarray(base[::step])


def live(base: np.ndarray, rate: int, streams: int, seconds: float) -> float:
    x = _audio(base, rate)
    chunk = rate // 50
    ticks = int(seconds * 50)
    pool = DenoiserPool(rate)
    dens = [Denoiser(rate, pool=pool) for _ in range(streams)]
    offsets = [(9973 * k) % (x.shape[0] - chunk) for k in range(streams)]
    pool.process_many([(d, x[:chunk]) for d in dens])
    t0 = time.process_time()
    for t in range(ticks):
        items = []
        for d, o in zip(dens, offsets, strict=True):
            s = (o + t * chunk) % (x.shape[0] - chunk)
            items.append((d, x[s : s + chunk]))
        pool.process_many(items)
    return (time.process_time() - t0) / (ticks * 0.02 * streams)


def job(base: np.ndarray, seconds: float) -> float:
    x = _audio(base, 16000)
    den = Denoiser(16000)
    n = int(seconds) * 16000
    blocks = [x[(i * 16000) % (x.shape[0] - 16000) :][:16000] for i in range(n // 16000)]
    t0 = time.process_time()
    for b in blocks:
        den.process(b)
    return (time.process_time() - t0) / (len(blocks))


def main() -> None:
    base = np.load(sys.argv[1])
    seconds = float(sys.argv[3])
    out: dict[str, float] = {}
    for item in sys.argv[2].split(","):
        rate, streams = (int(v) for v in item.split(":"))
        out[item] = live(base, rate, streams, seconds)
    out["job"] = job(base, max(2.0, 5 * seconds))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
