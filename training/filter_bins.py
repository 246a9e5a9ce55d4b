"""Narrow a deep-filter model's filter to its lowest N bins (the network still reads all its low bins).

    .venv/bin/python training/filter_bins.py IN.npz OUT.npz --bins 64

The head's outputs are laid out (bin, tap, re/im), so keeping the first ``N * taps * 2`` rows of
``df.weight`` and ``df.bias`` keeps exactly what the trained head gives those bins; the bins above
then get the band gain alone. This trades part of the filter's effect for its cost (the
per-bin products, and the head's output size).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def narrow(weights: dict[str, np.ndarray], bins: int) -> dict[str, np.ndarray]:
    """A copy of ``weights`` whose filter covers the lowest ``bins`` bins."""
    taps = int(weights["df_taps"])
    have = weights["df.bias"].size // (2 * taps)
    if not 0 < bins <= have:
        raise ValueError(f"--bins must be in 1..{have} (the head's bins)")
    out = dict(weights)
    out["df.weight"] = weights["df.weight"][: bins * taps * 2]
    out["df.bias"] = weights["df.bias"][: bins * taps * 2]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--bins", type=int, required=True)
    args = ap.parse_args()
    with np.load(args.src) as z:
        weights = {k: z[k] for k in z.files}
    np.savez(args.dst, **narrow(weights, args.bins))


if __name__ == "__main__":
    main()
