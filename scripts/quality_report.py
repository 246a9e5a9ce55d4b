"""Write the measured half of docs/quality.md from the committed evaluation set, and draw the spectrograms.

    .venv/bin/pip install -e '.[eval]' matplotlib      # matplotlib for the spectrograms only
    .venv/bin/python scripts/quality_report.py [--evalset DIR] [--json FILE] [--no-images]

It scores hushwire's denoiser on the evaluation set's 16, 8 and 48 kHz folders with ``hushwire
eval``'s code (cli/evaluate.py), replaces the section between the ``quality-report`` markers of
docs/quality.md, and writes docs/images/spectrogram-*.png (noisy / hushwire / clean) for two clips.
Every figure it writes comes from the repository alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DOC = ROOT / "docs" / "quality.md"
START, END = "<!-- quality-report:start -->\n", "<!-- quality-report:end -->\n"
CLIPS = ("white_p00", "keyboard_p00")     # spectrograms, from evalset/16k
NOISE_PARTS = ("fan_p05", "babble_p05")    # residual-noise rows: noisy - clean is the noise itself


def _row(label: str, a: dict[str, Any]) -> str:
    return (f"| {label} | {a['n']} | {a['pesq']:.3f} ({a['pesq_delta']:+.3f}) | {a['estoi']:.3f} "
            f"({a['estoi_delta']:+.3f}) | {a['si_sdr']:.2f} ({a['si_sdr_delta']:+.2f}) |")


def report(results: dict[str, dict[str, Any]]) -> str:
    s16 = results["16k"]
    head = "| group | n | PESQ-WB (Δ) | ESTOI (Δ) | SI-SDR dB (Δ) |\n|---|---|---|---|---|"
    lines = ["### hushwire on the evaluation set (measured)", "", head, _row("overall 16 kHz", s16["overall"])]
    lines += [_row(f"SNR {k} dB", v) for k, v in s16["groups"]["snr_db"].items()]
    lines += [_row(k, v) for k, v in sorted(s16["groups"]["noise_type"].items())]
    lines += [_row("8 kHz subset", results["8k"]["overall"]), _row("48 kHz subset", results["48k"]["overall"])]
    lines.append(_row("clean in", s16["clean_in"]))
    delays = ", ".join(f"{rate} {r['overall']['delay_ms_min']:.2f} to {r['overall']['delay_ms_max']:.2f} ms"
                       for rate, r in results.items())
    lines += [
        "",
        f"- Delay measured by cross-correlation, every pair: {delays}.",
        f"- Real-time factor of the in-process denoiser (one run, a shared machine, so only a rough figure): "
        f"{s16['overall']['rtf']:.3f} at 16 kHz.",
        "",
    ]
    return "\n".join(lines) + "\n"


def musical_noise(evalset: Path) -> str:
    """Log kurtosis ratio of the residual noise (Uemura et al., 2009): how much more peaky the power
    spectrogram of the noise becomes. Isolated surviving peaks (musical noise) raise it; 0 means the
    residual has the input noise's character, just quieter."""
    import soundfile as sf
    from scipy.signal import stft
    from scipy.stats import kurtosis

    from server.dsp import enhance

    rng = np.random.default_rng(0)
    white = rng.standard_normal(16000 * 8).astype(np.float32) * 0.03
    spectrum = np.fft.rfft(rng.standard_normal(16000 * 8))
    spectrum /= np.sqrt(np.maximum(np.arange(spectrum.size), 1))
    pink = (np.fft.irfft(spectrum) * 0.03 / np.std(np.fft.irfft(spectrum))).astype(np.float32)
    signals = {"white noise": (white, 16000), "pink noise": (pink, 16000)}
    for name in NOISE_PARTS:
        noisy, sr = sf.read(str(evalset / "16k" / "noisy" / f"{name}.flac"), dtype="float32")
        clean, _ = sf.read(str(evalset / "16k" / "clean" / f"{name}.flac"), dtype="float32")
        signals[f"{name.split('_')[0]} (evalset {name}, noise part)"] = (np.tile(noisy - clean, 3), sr)
    rows = ["| noise | attenuation dB | log kurtosis ratio | spectral flatness in / out |", "|---|---|---|---|"]
    for name, (x, sr) in signals.items():
        y = enhance(x, sr)
        skip = sr  # the first second: the estimators settle
        px = np.abs(stft(x[skip:], sr, nperseg=512)[2]) ** 2
        py = np.abs(stft(y[skip:], sr, nperseg=512)[2]) ** 2
        lkr = float(np.log(kurtosis(py.ravel(), fisher=False) / kurtosis(px.ravel(), fisher=False)))
        flat = [float(np.exp(np.mean(np.log(p + 1e-20), axis=0)).mean() / np.mean(p, axis=0).mean()) for p in (px, py)]
        att = 10 * np.log10(np.sum(px) / max(np.sum(py), 1e-20))
        rows.append(f"| {name} | {att:.1f} | {lkr:+.2f} | {flat[0]:.3f} / {flat[1]:.3f} |")
    return "\n".join(rows) + "\n"


def spectrograms(evalset: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile as sf

    from server.dsp import enhance

    for name in CLIPS:
        noisy, sr = sf.read(str(evalset / "16k" / "noisy" / f"{name}.flac"), dtype="float32")
        clean, _ = sf.read(str(evalset / "16k" / "clean" / f"{name}.flac"), dtype="float32")
        fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
        for ax, (title, x) in zip(axes, [("noisy", noisy), ("hushwire", enhance(noisy, sr)), ("clean", clean)],
                                  strict=True):
            ax.specgram(x, NFFT=512, Fs=sr, noverlap=384, cmap="magma", vmin=-140, vmax=-20)
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.set_ylabel("Hz")
        axes[-1].set_xlabel("s")
        fig.tight_layout()
        out = ROOT / "docs" / "images" / f"spectrogram-{name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=80)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from cli.evaluate import find_pairs, hushwire_system, score

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evalset", type=Path, default=ROOT / "evalset", help="the set (default: evalset/)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument("--no-images", action="store_true")
    args = parser.parse_args(argv)
    results = {}
    for rate in ("16k", "8k", "48k"):
        pairs = find_pairs(args.evalset / rate / "noisy", args.evalset / rate / "clean")
        results[rate] = score(pairs, [hushwire_system()])["systems"]["hushwire"]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    text = DOC.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    body = report(results)
    body += "\n### Residual noise: does it stay noise-like?\n\n" + musical_noise(args.evalset)
    DOC.write_text(head + START + body + END + tail)
    if not args.no_images:
        spectrograms(args.evalset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
