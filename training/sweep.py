"""Score checkpoints on dev (16 kHz pairs) over gain exponents and modes; one core.

    OMP_NUM_THREADS=1 .venv/bin/python training/sweep.py --dev DIR CKPT.npz [...] \
        [--exponents 1 1.25 1.5] [--modes model combined] [--lsa-powers 0.5]

``--dev DIR``: a dev folder as ``devscore.py`` describes, scored by ``cli/evaluate.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import eval_model  # noqa: E402
from devscore import add_dev_argument, score_dev  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--exponents", nargs="+", type=float, default=[1.0])
    ap.add_argument("--modes", nargs="+", default=["model"])
    ap.add_argument("--lsa-powers", nargs="+", type=float, default=[0.5])
    ap.add_argument("--floor-db", type=float, default=-40.0)
    add_dev_argument(ap, required=True)
    args = ap.parse_args()
    for ck in args.ckpts:
        for mode in args.modes:
            for lp in args.lsa_powers if mode == "combined" else [0.0]:
                for ex in args.exponents:
                    eval_model.configure(ck, ex, mode, lp, args.floor_db)
                    s = score_dev(args.dev, eval_model.enhance)
                    o = s["overall"]
                    extra = f" clean-in {s['clean_in']['pesq']:.2f}" if s["clean_in"] else ""
                    if s["noise_only_attenuation_db"] is not None:
                        extra += f" atten {s['noise_only_attenuation_db']:.1f}"
                    print(f"{Path(ck).name} {mode:8s} lsa^{lp:.2f} exp {ex:.2f}: dPESQ {o['d_pesq']:+.3f} "
                          f"ESTOI {o['estoi']:.3f} dSI-SDR {o['d_si_sdr']:+.2f}{extra}", flush=True)


if __name__ == "__main__":
    main()
