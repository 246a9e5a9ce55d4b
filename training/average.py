"""Average the weights of several checkpoints of one run and export them as a gain-model .npz.

    .venv/bin/python training/average.py OUT.npz CKPT.pt [CKPT.pt ...]

Averaging checkpoints taken along one training trajectory (the same architecture, a shared
starting point) gives a point near the middle of the basin they explore; for small recurrent
nets trained with a noisy, on-the-fly data stream it is usually a little better than any one
of them (Izmailov et al., "Averaging weights leads to wider optima and better
generalization", UAI 2018). The feature normalisation buffers are averaged too (they are
identical within a run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train import GainNet, export_npz  # noqa: E402


def average(paths: list[str]) -> GainNet:
    states = [torch.load(p) for p in paths]
    model = GainNet.from_state(states[0])
    model.load_state_dict({k: sum(s[k] for s in states) / len(states) for k in states[0]})
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("ckpts", nargs="+")
    args = ap.parse_args()
    export_npz(average(args.ckpts), Path(args.out))
    print(f"averaged {len(args.ckpts)} checkpoints -> {args.out}")


if __name__ == "__main__":
    main()
