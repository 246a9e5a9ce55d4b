"""Write the measured half of docs/quality.md from a score.py JSON, and draw the spectrograms.

    .venv/bin/python ../shared/eval/score.py --data ../shared/eval-data/dev \\
        --cmd '.venv/bin/hushwire denoise --no-align {in} {out}' --json /tmp/dev-scores.json
    .venv/bin/python scripts/quality_report.py /tmp/dev-scores.json     # needs matplotlib (docs only)

It replaces the section between the ``quality-report`` markers of docs/quality.md and writes
docs/images/spectrogram-*.png (noisy / hushwire / clean) for two clips.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "quality.md"
DEV = ROOT.parent / "shared" / "eval-data" / "dev"
START, END = "<!-- quality-report:start -->\n", "<!-- quality-report:end -->\n"
CLIPS = ("d001_white_p00", "d031_keyboard_p00")


def _row(label: str, a: dict[str, float]) -> str:
    return (f"| {label} | {a['n']} | {a['pesq']:.3f} ({a['d_pesq']:+.3f}) | {a['estoi']:.3f} ({a['d_estoi']:+.3f}) "
            f"| {a['si_sdr']:.2f} ({a['d_si_sdr']:+.2f}) |")


def report(result: dict) -> str:
    s = result["summary"]
    head = "| group | n | PESQ-WB (Δ) | ESTOI (Δ) | SI-SDR dB (Δ) |\n|---|---|---|---|---|"
    lines = ["### hushwire on dev (measured)", "", head, _row("overall 16 kHz", s["overall"])]
    lines += [_row(f"SNR {k} dB", v) for k, v in sorted(s["per_snr"].items(), key=lambda kv: float(kv[0]))]
    lines += [_row(k, v) for k, v in sorted(s["per_noise"].items())]
    if s.get("fullband_48k"):
        lines.append(_row("48 kHz subset", s["fullband_48k"]))
    if s.get("clean_in"):
        lines.append(_row("clean in", s["clean_in"]))
    real = [f for f in result["files"] if f["kind"] == "noisy" and f["subset"] == "16k"
            and str(f.get("speech_source", "")).startswith("real:")]
    d = s["delay_ms"]
    lines += [
        "",
        f"- Real recorded speech ({len(real)} pairs): ΔPESQ {np.mean([f['d_pesq'] for f in real]):+.3f}, "
        f"ΔESTOI {np.mean([f['d_estoi'] for f in real]):+.3f}.",
        f"- Noise-only attenuation: {s['noise_only_attenuation_db']:.1f} dB.",
        f"- Delay measured by the scorer: median {d['median']:.2f} ms (min {d['min']:.2f}, max {d['max']:.2f}); "
        f"by rate: {', '.join(f'{k} Hz {v:.2f} ms' for k, v in s['delay_ms_by_rate'].items())}.",
        f"- RTF (one core, whole `hushwire denoise` process including start-up): {s['rtf']:.4f}.",
        "",
    ]
    return "\n".join(lines) + "\n"


def musical_noise() -> str:
    """Log kurtosis ratio of the residual noise (Uemura et al., 2009): how much more peaky the power
    spectrogram of the noise becomes. Isolated surviving peaks (musical noise) raise it; 0 means the
    residual has the input noise's character, just quieter."""
    import soundfile as sf
    from scipy.signal import stft
    from scipy.stats import kurtosis

    sys.path.insert(0, str(ROOT))
    from server.dsp import enhance

    rng = np.random.default_rng(0)
    white = rng.standard_normal(16000 * 8).astype(np.float32) * 0.03
    spectrum = np.fft.rfft(rng.standard_normal(16000 * 8))
    spectrum /= np.sqrt(np.maximum(np.arange(spectrum.size), 1))
    pink = (np.fft.irfft(spectrum) * 0.03 / np.std(np.fft.irfft(spectrum))).astype(np.float32)
    signals = {"white noise": (white, 16000), "pink noise": (pink, 16000)}
    for name in ("d048_noiseonly_fan", "d049_noiseonly_babble"):
        x, sr = sf.read(str(DEV / "noisy" / f"{name}.wav"), dtype="float32")
        signals[name] = (x, sr)
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


def spectrograms() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile as sf

    sys.path.insert(0, str(ROOT))
    from server.dsp import enhance

    for name in CLIPS:
        noisy, sr = sf.read(str(DEV / "noisy" / f"{name}.wav"), dtype="float32")
        clean, _ = sf.read(str(DEV / "clean" / f"{name}.wav"), dtype="float32")
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scores", type=Path, help="score.py --json output")
    parser.add_argument("--no-images", action="store_true")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    body = report(json.loads(args.scores.read_text()))
    body += "\n### Residual noise: does it stay noise-like?\n\n" + musical_noise()
    DOC.write_text(head + START + body + END + tail)
    if not args.no_images:
        spectrograms()
    return 0


if __name__ == "__main__":
    sys.exit(main())
