"""Dev scoring for the training scripts, with the repository's own scorer (``cli/evaluate.py``).

The dev folder is always given explicitly (``--dev DIR``): ``DIR/noisy`` and ``DIR/clean`` matched
by file name, a ``manifest.csv`` in ``DIR`` or ``DIR/noisy`` for the per-noise and per-SNR rows
(``noise_type``, ``snr_db``; ``inf`` marks clean-in pairs, ``-inf`` noise-only ones), and
optionally ``DIR/48k`` laid out the same way. An external dev corpus fits as it is.

There is no default on purpose: choosing checkpoints or constants on ``evalset/`` would spend its
held-out status (``training/heldout.py``). Pass it only to look, not to choose.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cli.evaluate import find_pairs, function_system, score  # noqa: E402

__all__ = ["add_dev_argument", "score_dev"]


def add_dev_argument(ap: argparse.ArgumentParser, required: bool) -> None:
    ap.add_argument("--dev", type=Path, required=required, default=None, metavar="DIR",
                    help="dev folder: noisy/, clean/ (+ manifest.csv, 48k/); e.g. an external dev corpus"
                    + ("" if required else " (without it: no dev checks)"))


def _legacy(a: dict[str, Any]) -> dict[str, Any]:
    """cli.evaluate's aggregate in the keys the training scripts print (d_X = X's change)."""
    return {"n": a["n"], "pesq": a["pesq"], "d_pesq": a["pesq_delta"], "estoi": a["estoi"],
            "d_estoi": a["estoi_delta"], "si_sdr": a["si_sdr"], "d_si_sdr": a["si_sdr_delta"]}


def score_dev(dev: Path, fn: Callable[[np.ndarray, int], np.ndarray], include_48k: bool = False) -> dict[str, Any]:
    """Score ``fn(x, rate) -> y`` (delay removed or not: it is measured) on the dev folder."""
    def run(folder: Path) -> dict[str, Any]:
        pairs = find_pairs(folder / "noisy", folder / "clean")
        out: dict[str, Any] = score(pairs, [function_system("dev", fn)])["systems"]["dev"]
        return out

    s = run(dev)
    groups = s["groups"]
    full = run(dev / "48k") if include_48k and (dev / "48k" / "noisy").is_dir() else None
    return {
        "overall": _legacy(s["overall"]),
        "per_noise": {k: _legacy(v) for k, v in groups.get("noise_type", {}).items()},
        "per_snr": {k: _legacy(v) for k, v in groups.get("snr_db", {}).items()},
        "clean_in": _legacy(s["clean_in"]) if s["clean_in"] else None,
        "noise_only_attenuation_db": s["noise_only"]["attenuation_db"] if s["noise_only"] else None,
        "fullband_48k": _legacy(full["overall"]) if full else None,
        "delay_ms": s["overall"]["delay_ms"],
    }
