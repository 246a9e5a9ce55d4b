"""Score the full streaming denoiser (``server.dsp.Denoiser``) on dev with other weights or constants.

    OMP_NUM_THREADS=1 .venv/bin/python training/tune.py --dev DIR [--weights W.npz ...] \
        [--set denoiser.MODEL_GAIN_EXPONENT=1.0,1.2] [--set gain.DD_ALPHA=0.95] [--48k]

``--dev DIR`` is a dev folder as ``devscore.py`` describes (an external dev corpus, say); it is
scored with the repository's own scorer (``cli/evaluate.py``).

Every combination of the ``--set`` values is scored in-process (about 25 s each at 16 kHz)
with the same signal path as ``hushwire denoise``. One line per run gives the issue #4
figures: overall ΔPESQ / ESTOI / ΔSI-SDR, the worst per-noise-type and per-SNR-band ΔESTOI,
clean-in PESQ and level, noise-only attenuation and (with ``--48k``) the 48 kHz ΔPESQ. Used
to choose checkpoints and the combination constants on dev; nothing here trains on dev.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "training"))

from devscore import add_dev_argument, score_dev  # noqa: E402

from server.dsp import denoiser  # noqa: E402
from server.dsp.model import load_weights  # noqa: E402


def clean_level_db(dev: Path) -> float:
    """Mean output/input level difference on the clean-in pairs, dB (the full denoiser)."""
    import soundfile as sf
    diffs = []
    for p in sorted((dev / "noisy").iterdir()):
        if p.suffix.lower() not in (".wav", ".flac"):
            continue
        x, sr = sf.read(p, dtype="float32")
        if not np.allclose(x, sf.read(dev / "clean" / p.name, dtype="float32")[0]):
            continue
        y = denoiser.enhance(x, sr)
        diffs.append(10 * np.log10(np.sum(y.astype(np.float64) ** 2) / np.sum(x.astype(np.float64) ** 2)))
    return float(np.mean(diffs)) if diffs else float("nan")  # no clean-in pairs


def summary_line(s: dict) -> str:
    """One line of figures from ``devscore.score_dev``'s summary."""
    o = s["overall"]
    line = f"dPESQ {o['d_pesq']:+.3f} ESTOI {o['estoi']:.4f} dSI-SDR {o['d_si_sdr']:+.2f}"
    if s["per_noise"] and s["per_snr"]:
        worst_type = min(s["per_noise"].items(), key=lambda kv: kv[1]["d_estoi"])
        worst_snr = min(s["per_snr"].items(), key=lambda kv: kv[1]["d_estoi"])
        line += (f" | worst dESTOI {worst_type[0]} {worst_type[1]['d_estoi']:+.4f}, snr {worst_snr[0]} "
                 f"{worst_snr[1]['d_estoi']:+.4f}")
    if s["clean_in"]:
        line += f" | clean-in {s['clean_in']['pesq']:.3f}"
    if s["noise_only_attenuation_db"] is not None:
        line += f" | atten {s['noise_only_attenuation_db']:.1f}"
    if s.get("fullband_48k"):
        line += f" | 48k dPESQ {s['fullband_48k']['d_pesq']:+.3f} ESTOI {s['fullband_48k']['estoi']:.3f}"
    return line


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", nargs="*", default=[None])
    ap.add_argument("--set", action="append", default=[], help="module.NAME=v1,v2 (module in server.dsp)")
    ap.add_argument("--48k", dest="full", action="store_true", help="also score the 48 kHz pairs")
    ap.add_argument("--level", action="store_true", help="also report the clean-in level change")
    ap.add_argument("--json", help="write the last run's scorer result here")
    add_dev_argument(ap, required=True)
    args = ap.parse_args()
    grid = []
    for spec in args.set:
        name, vals = spec.split("=", 1)
        mod, attr = name.rsplit(".", 1)
        grid.append((importlib.import_module(f"server.dsp.{mod}"), attr, [float(v) for v in vals.split(",")]))
    for w in args.weights:
        weights = load_weights(w) if w is not None else None
        for combo in itertools.product(*[g[2] for g in grid]):
            label = [Path(w).name if w else "shipped"]
            for (mod, attr, _), v in zip(grid, combo, strict=True):
                setattr(mod, attr, v)
                label.append(f"{attr}={v:g}")
            denoiser.use_weights(weights)  # fresh engines too: they hold constants read at construction
            res = score_dev(args.dev, denoiser.enhance, include_48k=args.full)
            line = summary_line(res)
            if args.level:
                line += f" | clean level {clean_level_db(args.dev):+.2f} dB"
            print(" ".join(label) + ": " + line, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
