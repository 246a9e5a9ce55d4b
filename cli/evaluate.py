"""``hushwire eval``: score a denoiser on a folder of noisy/clean pairs.

    hushwire eval --noisy DIR --clean DIR [--json FILE] [--markdown FILE] [--cmd 'COMMAND {in} {out}']

**Pairs.** Every audio file in ``--noisy`` is paired with the file of the same name in ``--clean``
(the same stem with another extension also matches, e.g. ``a.wav`` with ``a.flac``). Both must
have the same rate and length; several channels are averaged to mono.

**Groups.** A ``manifest.csv`` in ``--noisy`` (or in its parent folder) with a ``file`` or ``id``
column (name or stem) gives a per-group table for each of its ``group``, ``noise_type`` and
``snr_db`` columns that is present. A row whose ``snr_db`` is ``inf`` is a clean-in pair (noisy ==
clean), scored on its own line; one whose ``snr_db`` is ``-inf``, or whose clean file is silent, is
noise only: it gets the attenuation in dB (input energy over output energy) and no speech metrics.
Neither kind counts in the overall means. Without a manifest a file named ``GROUP__anything.wav`` is
in group ``GROUP`` (two underscores); other files are in no group.

**Systems.** hushwire's own denoiser runs in-process, its output kept as a live stream delivers
it (with the algorithmic delay), so the measured delay can be checked against the one it
reports. ``--cmd`` adds any other command, run once per pair: ``{in}`` is the noisy file,
``{out}`` the WAV to write, ``{sr}`` the rate. The template is split like a shell line but run
without a shell; wrap it in ``sh -c '...'`` for pipes.

**Metrics** (per pair, on the output after the measured delay is undone):

- ``pesq``: ITU-T P.862.2 wide-band PESQ (the ``pesq`` package), at 16 kHz: other rates are
  resampled (soxr) for PESQ only. A pair where PESQ finds no speech gives ``null``.
- ``estoi``: extended STOI (``pystoi``).
- ``si_sdr``: scale-invariant SDR in dB (Le Roux et al. 2019, "SDR - half-baked or well done?").
- each has a ``_delta``: the output's score minus the unprocessed noisy input's, same reference.
- ``delay_ms``: the lag of the output behind the noisy input that maximises their
  cross-correlation, searched within +-500 ms, in whole samples. Overall: the median.
- ``rtf``: processing seconds per second of audio (hushwire: the denoiser call; ``--cmd``: the
  whole process, start-up included).

``overall`` holds the means over the noisy pairs (clean-in pairs excluded). The scoring needs
``pesq`` and ``pystoi``, which the ``hushwire[eval]`` extra installs.
"""

from __future__ import annotations

import csv
import json
import math
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

__all__ = [
    "EXTRA_HINT", "EvalError", "Pair", "System", "command_system", "estimate_delay", "find_pairs",
    "function_system", "hushwire_system", "require_metrics", "score", "si_sdr", "to_markdown",
]

Array = npt.NDArray[np.float64]
PESQ_RATE_HZ = 16000
MAX_DELAY_MS = 500.0
COMMAND_TIMEOUT_S = 600.0  # one --cmd run; a hung command must not hang the evaluation
GROUP_COLUMNS = ("group", "noise_type", "snr_db")
AUDIO_SUFFIXES = frozenset(f".{ext.lower()}" for ext in sf.available_formats()) | {".oga", ".opus"}
EXTRA_HINT = ("hushwire eval needs pesq and pystoi: pip install 'hushwire[eval]' "
              "(pesq builds from source: it needs a C compiler and the Python headers)")
METRICS = ("pesq", "estoi", "si_sdr")
ATTENUATION_CAP_DB = 120.0  # a noise-only output that is digital silence


class EvalError(Exception):
    """A problem with the folders or the command that the user can fix (printed as one line)."""


def require_metrics() -> None:
    """Fail with the install hint when the ``eval`` extra is missing."""
    try:
        import pesq  # noqa: F401
        import pystoi  # noqa: F401
    except ImportError as exc:
        raise EvalError(f"{EXTRA_HINT} [{exc}]") from None


# -- metrics ------------------------------------------------------------------------------------


def si_sdr(reference: Array, estimate: Array) -> float:
    """Scale-invariant SDR in dB of ``estimate`` against ``reference`` (both made zero-mean)."""
    ref = reference - reference.mean()
    est = estimate - estimate.mean()
    scale = float(np.dot(est, ref) / max(float(np.dot(ref, ref)), 1e-20))
    target = scale * ref
    residual = est - target
    return 10.0 * math.log10(max(float(np.dot(target, target)), 1e-20) / max(float(np.dot(residual, residual)), 1e-20))


def estimate_delay(reference: Array, output: Array, rate: int, max_ms: float = MAX_DELAY_MS) -> int:
    """Samples by which ``output`` lags ``reference`` (negative: it leads), by FFT cross-correlation."""
    if not output.any() or not reference.any():
        return 0
    size = 1 << (len(reference) + len(output) - 1).bit_length()
    xcorr = np.fft.irfft(np.fft.rfft(output, size) * np.conj(np.fft.rfft(reference, size)), size)
    span = min(int(max_ms * rate / 1000), size // 2 - 1)
    lags = np.r_[0 : span + 1, -span:0]
    values = np.r_[xcorr[: span + 1], xcorr[size - span :]]
    return int(lags[int(np.argmax(values))])


def _shift(output: Array, lag: int, frames: int) -> Array:
    """Undo a delay of ``lag`` samples, then cut or zero-pad to ``frames``."""
    y = output[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag), output])
    return y[:frames] if len(y) >= frames else np.concatenate([y, np.zeros(frames - len(y))])


def _pesq(reference: Array, degraded: Array, rate: int) -> float | None:
    from pesq import pesq
    from pesq.cypesq import PesqError

    if rate != PESQ_RATE_HZ:
        reference = soxr.resample(reference, rate, PESQ_RATE_HZ)
        degraded = soxr.resample(degraded, rate, PESQ_RATE_HZ)
    try:
        return float(pesq(PESQ_RATE_HZ, reference, degraded, "wb"))
    except PesqError:  # no utterance found (a silent output): undefined, left out of the means
        return None


def _metrics(reference: Array, degraded: Array, rate: int) -> dict[str, float | None]:
    from pystoi import stoi

    return {"pesq": _pesq(reference, degraded, rate), "estoi": float(stoi(reference, degraded, rate, extended=True)),
            "si_sdr": si_sdr(reference, degraded)}


# -- pairs --------------------------------------------------------------------------------------


@dataclass
class Pair:
    name: str
    noisy: Path
    clean: Path
    groups: dict[str, str] = field(default_factory=dict)
    clean_in: bool = False
    noise_only: bool = False


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def _manifest(folder: Path) -> dict[str, dict[str, str]] | None:
    path = next((p for p in (folder / "manifest.csv", folder.parent / "manifest.csv") if p.is_file()), None)
    if path is None:
        return None
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        key = next((k for k in ("file", "id") if k in (reader.fieldnames or [])), None)
        if key is None:
            raise EvalError(f"{path}: a manifest needs a 'file' (or 'id') column")
        rows = {}
        for row in reader:
            rows[Path(row[key]).stem] = {k: (v or "").strip() for k, v in row.items() if k is not None}
        return rows


def find_pairs(noisy_dir: Path, clean_dir: Path) -> list[Pair]:
    """The noisy/clean pairs of two folders, matched by file name (or stem), with their groups."""
    for folder, flag in ((noisy_dir, "--noisy"), (clean_dir, "--clean")):
        if not folder.is_dir():
            raise EvalError(f"{flag} {folder}: not a directory")
    clean: dict[str, list[Path]] = {}
    for p in _audio_files(clean_dir):
        clean.setdefault(p.stem, []).append(p)
    manifest = _manifest(noisy_dir)
    pairs = []
    for noisy in _audio_files(noisy_dir):
        same = clean_dir / noisy.name
        candidates = [same] if same.is_file() else clean.get(noisy.stem, [])
        if len(candidates) != 1:
            what = "no" if not candidates else "more than one"
            raise EvalError(f"{noisy.name}: {what} clean file with that name in {clean_dir}")
        pair = Pair(noisy.stem, noisy, candidates[0])
        if manifest is not None:
            row = manifest.get(noisy.stem, {})
            pair.groups = {k: row[k] for k in GROUP_COLUMNS if row.get(k)}
            pair.clean_in = row.get("snr_db", "").lower() in ("inf", "+inf")
            pair.noise_only = row.get("snr_db", "").lower() == "-inf"
        elif "__" in noisy.stem:
            pair.groups = {"group": noisy.stem.split("__", 1)[0]}
        pairs.append(pair)
    if not pairs:
        raise EvalError(f"no audio files in {noisy_dir}")
    return pairs


def _read(path: Path) -> tuple[Array, int]:
    try:
        x, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise EvalError(f"cannot read {path}: {exc}") from None
    return x.mean(axis=1), int(rate)


# -- systems ------------------------------------------------------------------------------------


class System(Protocol):
    """Something that denoises one pair: returns (output, its rate, processing seconds)."""

    name: str

    def run(self, pair: Pair, x: Array, rate: int) -> tuple[Array, int, float]: ...


@dataclass
class _Function:
    name: str
    fn: Callable[[Array, int], npt.ArrayLike]

    def run(self, pair: Pair, x: Array, rate: int) -> tuple[Array, int, float]:
        t0 = time.perf_counter()
        y = self.fn(x, rate)
        seconds = time.perf_counter() - t0
        return np.asarray(y, dtype=np.float64).reshape(-1), rate, seconds


def function_system(name: str, fn: Callable[[Array, int], npt.ArrayLike]) -> System:
    """A Python callable ``fn(x, rate) -> y`` (mono float arrays at the input's rate)."""
    return _Function(name, fn)


def hushwire_system(attenuation_limit_db: float | None = None) -> System:
    """hushwire's streaming denoiser in-process; the output keeps its algorithmic delay."""
    from hushwire.contract.limits import native_rate
    from server.dsp import Denoiser

    def denoise(x: Array, rate: int) -> Array:
        native = native_rate(rate)
        xs = soxr.resample(x, rate, native) if native != rate else x
        den = Denoiser(native, 1, attenuation_limit_db)
        y = np.concatenate([den.process(xs.astype(np.float32)[:, None]), den.flush()])[:, 0].astype(np.float64)
        return soxr.resample(y, native, rate) if native != rate else y

    return _Function("hushwire", denoise)


@dataclass
class _Command:
    name: str
    template: list[str]
    workdir: Path

    def run(self, pair: Pair, x: Array, rate: int) -> tuple[Array, int, float]:
        out = self.workdir / f"{pair.name}.wav"
        out.unlink(missing_ok=True)
        values = {"in": str(pair.noisy), "out": str(out), "sr": str(rate)}
        argv = [part.replace("{in}", values["in"]).replace("{out}", values["out"]).replace("{sr}", values["sr"])
                for part in self.template]
        t0 = time.perf_counter()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        except FileNotFoundError:
            raise EvalError(f"--cmd: no such program: {argv[0]}") from None
        except subprocess.TimeoutExpired:
            raise EvalError(f"--cmd timed out after {COMMAND_TIMEOUT_S:.0f} s on {pair.noisy.name}") from None
        seconds = time.perf_counter() - t0
        if done.returncode != 0 or not out.is_file():
            tail = done.stderr.strip().splitlines()[-1:] or ["no output file"]
            raise EvalError(f"--cmd failed on {pair.noisy.name} (exit {done.returncode}): {tail[0][:300]}")
        y, out_rate = _read(out)
        return y, out_rate, seconds


def command_system(template: str, workdir: Path) -> System:
    """A command run once per pair: ``{in}`` noisy file, ``{out}`` WAV to write, ``{sr}`` rate."""
    argv = shlex.split(template)
    if not argv or not any("{out}" in part for part in argv):
        raise EvalError("--cmd needs a command with {out} (and usually {in}), e.g. 'cp {in} {out}'")
    return _Command(template, argv, workdir)


# -- scoring ------------------------------------------------------------------------------------


def _clean_float(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def _aggregate(files: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(files)}
    for m in METRICS:
        out[m] = _mean([f[m] for f in files])
        out[f"{m}_delta"] = _mean([f[f"{m}_delta"] for f in files])
    delays = [f["delay_ms"] for f in files]
    out["delay_ms"] = float(np.median(delays)) if delays else None
    out["delay_ms_min"] = min(delays) if delays else None
    out["delay_ms_max"] = max(delays) if delays else None
    seconds = sum(f["seconds"] for f in files)
    out["rtf"] = sum(f["processing_seconds"] for f in files) / seconds if seconds else None
    out["pesq_undefined"] = sum(1 for f in files if f["pesq"] is None)
    return out


def _summary(files: list[dict[str, Any]]) -> dict[str, Any]:
    noisy = [f for f in files if not f["clean_in"] and not f["noise_only"]]
    clean_in = [f for f in files if f["clean_in"]]
    noise_only = [f for f in files if f["noise_only"]]
    groups: dict[str, dict[str, Any]] = {}
    for column in GROUP_COLUMNS:
        values = sorted({f["groups"][column] for f in noisy if column in f["groups"]}, key=_group_order)
        if values:
            groups[column] = {v: _aggregate([f for f in noisy if f["groups"].get(column) == v]) for v in values}
    return {"overall": _aggregate(noisy), "groups": groups,
            "clean_in": _aggregate(clean_in) if clean_in else None,
            "noise_only": {"n": len(noise_only), "attenuation_db": _mean([f["attenuation_db"] for f in noise_only])}
            if noise_only else None,
            "files": files}


def _group_order(value: str) -> tuple[int, float, str]:
    try:
        return 0, float(value), value
    except ValueError:
        return 1, 0.0, value


def score(pairs: list[Pair], systems: Sequence[System], progress: Callable[[str], None] | None = None,
          max_delay_ms: float = MAX_DELAY_MS) -> dict[str, Any]:
    """Score every system on every pair. Returns ``{"pairs", "systems": {name: summary}}``."""
    require_metrics()
    per_system: dict[str, list[dict[str, Any]]] = {s.name: [] for s in systems}
    for i, pair in enumerate(pairs):
        x, rate = _read(pair.noisy)
        ref, ref_rate = _read(pair.clean)
        if ref_rate != rate or len(ref) != len(x):
            raise EvalError(f"{pair.name}: noisy and clean differ in rate or length "
                            f"({rate} Hz x {len(x)} vs {ref_rate} Hz x {len(ref)})")
        noise_only = pair.noise_only or not ref.any()
        before = None if noise_only else _metrics(ref, x, rate)
        for system in systems:
            y, out_rate, seconds = system.run(pair, x, rate)
            if out_rate != rate:
                y = soxr.resample(y, out_rate, rate)
            lag = estimate_delay(x, y, rate, max_delay_ms)
            aligned = _shift(y, lag, len(x))
            row: dict[str, Any] = {"file": pair.noisy.name, "groups": pair.groups, "clean_in": pair.clean_in,
                                   "noise_only": noise_only, "sample_rate": rate, "seconds": len(x) / rate,
                                   "processing_seconds": seconds, "delay_ms": 1000.0 * lag / rate,
                                   "length_difference_ms": 1000.0 * (len(y) - len(x)) / rate}
            if before is None:
                e_in, e_out = float(np.sum(x**2)), float(np.sum(aligned**2))
                row["attenuation_db"] = (ATTENUATION_CAP_DB if e_out <= 0 else
                                         min(ATTENUATION_CAP_DB, 10.0 * math.log10(max(e_in, 1e-30) / e_out)))
                per_system[system.name].append(row)
                continue
            after = _metrics(ref, aligned, rate)
            for m in METRICS:
                a, b = after[m], before[m]
                row[m] = _clean_float(a)
                row[f"noisy_{m}"] = _clean_float(b)
                row[f"{m}_delta"] = _clean_float(a - b) if a is not None and b is not None else None
            per_system[system.name].append(row)
        if progress:
            progress(f"{i + 1}/{len(pairs)} {pair.noisy.name}")
    return {"pairs": len(pairs), "systems": {name: _summary(files) for name, files in per_system.items()}}


# -- report -------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _cells(a: dict[str, Any]) -> str:
    return (f"{a['n']} | {_fmt(a['pesq'], '.3f')} ({_fmt(a['pesq_delta'], '+.3f')}) | "
            f"{_fmt(a['estoi'], '.3f')} ({_fmt(a['estoi_delta'], '+.3f')}) | "
            f"{_fmt(a['si_sdr'], '.2f')} ({_fmt(a['si_sdr_delta'], '+.2f')}) | {_fmt(a['delay_ms'], '.2f')}")


def to_markdown(result: dict[str, Any]) -> str:
    """The result as Markdown tables: overall and per group, one row per system."""
    head = ("| system | group | n | PESQ-WB (Δ) | ESTOI (Δ) | SI-SDR dB (Δ) | delay ms |\n"
            "|---|---|---|---|---|---|---|")
    lines = [f"Noisy/clean pairs: {result['pairs']}. Δ: the output's score minus the noisy input's. "
             "Delay: median lag behind the input by cross-correlation.", "", head]
    for name, s in result["systems"].items():
        lines.append(f"| {name} | overall | {_cells(s['overall'])} |")
        for column, values in s["groups"].items():
            for value, a in values.items():
                label = f"SNR {value} dB" if column == "snr_db" else value
                lines.append(f"| {name} | {label} | {_cells(a)} |")
        if s["clean_in"]:
            lines.append(f"| {name} | clean in | {_cells(s['clean_in'])} |")
    for name, s in result["systems"].items():
        if s["noise_only"]:
            lines.append(f"\n{name}: noise-only pairs ({s['noise_only']['n']}) attenuated by "
                         f"{_fmt(s['noise_only']['attenuation_db'], '.1f')} dB on average.")
    rtf = ", ".join(f"{name} {_fmt(s['overall']['rtf'], '.3f')}" for name, s in result["systems"].items())
    lines += ["", f"Real-time factor (processing s per audio s): {rtf}."]
    return "\n".join(lines) + "\n"


def to_json(result: dict[str, Any], noisy_dir: Path, clean_dir: Path) -> dict[str, Any]:
    """hushwire's summary at the top level (``overall``, ``groups``, ``clean_in``, ``files``);
    a ``--cmd`` system's under ``cmd``."""
    systems = dict(result["systems"])
    out: dict[str, Any] = {"noisy": str(noisy_dir), "clean": str(clean_dir), "pairs": result["pairs"],
                           "system": "hushwire", **systems.pop("hushwire")}
    for name, summary in systems.items():
        out["cmd"] = {"command": name, **summary}
    return out


def main(noisy: str, clean: str, json_path: str | None, markdown_path: str | None, cmd: str | None,
         attenuation_limit_db: float | None, progress: Callable[[str], None] | None = None) -> str:
    """Run the command; returns the Markdown report (also written to ``markdown_path``)."""
    require_metrics()
    pairs = find_pairs(Path(noisy), Path(clean))
    with tempfile.TemporaryDirectory(prefix="hushwire-eval-") as tmp:
        systems = [hushwire_system(attenuation_limit_db)]
        if cmd is not None:
            systems.append(command_system(cmd, Path(tmp)))
        result = score(pairs, systems, progress)
    report = to_markdown(result)
    if json_path:
        Path(json_path).write_text(json.dumps(to_json(result, Path(noisy), Path(clean)), indent=1) + "\n")
    if markdown_path:
        Path(markdown_path).write_text(report)
    return report
