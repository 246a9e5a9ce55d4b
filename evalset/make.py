"""Build hushwire's evaluation set: held-out TTS speech in synthetic noise at several SNRs.

    .venv/bin/python evalset/make.py [--out evalset]      # about a minute; needs the TTS below

The built set is committed (``evalset/16k``, ``evalset/8k``, ``evalset/48k``; see
``evalset/README.md``), so the tests' thresholds do not move with the TTS packages' versions.
Re-run this only to change the set, then re-measure the figures that quote it.

Sources, all installable: Debian's ``espeak-ng``, ``flite``, ``festival`` and
``festvox-us-slt-hts``; noises from ``training/noises.py``'s generators (numpy/scipy).
Everything this script speaks or draws is held out from training by ``training/heldout.py``:
the voices (festival ``cmu_us_slt_arctic_hts``, flite ``rms``, espeak-ng ``+f4``/``+m7``), the
sentences, and the noise seeds (each clip has its own ``default_rng(seed)``, seed >= 9000).

Each folder holds ``noisy/*.flac``, ``clean/*.flac`` (PCM16, mono, same names and lengths) and
``noisy/manifest.csv`` (``file, noise_type, snr_db, voice, sentence, noise_seed, seconds``):

- ``16k``: 8 noise types x 5 SNR bands (-5, 0, 5, 10, 15 dB), plus 2 clean-in pairs
  (``noise_type`` ``none``, ``snr_db`` ``inf``: noisy == clean);
- ``8k``: the 16k pairs at 5 dB, resampled to 8 kHz (telephone band);
- ``48k``: 5 pairs made at 48 kHz (speech from the 32 and 22 kHz voices, noise generated at
  48 kHz): white and babble at 0 dB, hum at -5, keyboard at 5 and music at 10 dB.

SNR is active-speech SNR: speech power over its 20 ms frames within 35 dB of the loudest one,
against the noise's mean power over the whole clip. Speech sits at an active level drawn from
-32 to -22 dBFS; when the noisy clip would peak above -1 dBFS both files are scaled down together.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "training"))

import heldout  # noqa: E402
import noises  # noqa: E402

SPEECH_SEED = 16  # voice settings and level draws (random.Random); noise seeds come from heldout
NOISE_TYPES = ("white", "pink", "hum", "fan", "car", "keyboard", "music", "babble")
SNRS_DB = (-5, 0, 5, 10, 15)
SNRS_8K_DB = (5,)
CLIPS_48K = (("white", 0), ("hum", -5), ("keyboard", 5), ("music", 10), ("babble", 0))
LEAD_S, TAIL_S = 0.4, 0.15         # noise alone before and after the speech
ACTIVE_RANGE_DB = 35.0             # frames this far below the loudest still count as speech
LEVEL_DBFS = (-32.0, -22.0)        # active speech level
PEAK_MAX = 10 ** (-1 / 20)         # -1 dBFS
# Target talkers: (engine, voice). The 48 kHz subset uses only the voices with content above 8 kHz.
TARGETS = (("festival", "cmu_us_slt_arctic_hts"), ("flite", "rms"), ("espeak-ng", "en-us+f4"),
           ("espeak-ng", "en-gb-x-rp+m7"), ("espeak-ng", "en-gb-scotland+f4"), ("espeak-ng", "en-029+m7"))
TARGETS_48K = tuple(t for t in TARGETS if t[0] != "flite")  # flite's rms is a 16 kHz voice
# Babble talkers: the same held-out voices in other accents and settings.
BABBLE_TALKERS = (("espeak-ng", "en-us-nyc+m7"), ("espeak-ng", "en-gb-x-gbclan+f4"), ("espeak-ng", "en+m7"),
                  ("espeak-ng", "en-gb-x-gbcwmd+f4"), ("flite", "rms"), ("festival", "cmu_us_slt_arctic_hts"))


@dataclass
class Utterance:
    audio: np.ndarray  # float64 mono at ``rate``
    rate: int
    voice: str         # engine:voice:settings


def _check_voices() -> None:
    """Fail loudly when a held-out voice is missing (espeak-ng falls back silently)."""
    variants = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True).stdout
    for v in heldout.ESPEAK_VARIANTS:
        if f"!v/{v[1:]} " not in variants + " ":
            raise SystemExit(f"espeak-ng has no variant {v}")
    flite = subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=True).stdout.split()
    for v in heldout.FLITE_VOICES:
        if v not in flite:
            raise SystemExit(f"flite has no voice {v}")


def _speak(engine: str, voice: str, text: str, rng: random.Random, tmp: Path) -> Utterance:
    out = tmp / "tts.wav"
    out.unlink(missing_ok=True)
    if engine == "espeak-ng":
        assert heldout.is_heldout_espeak(voice), voice
        speed, pitch = rng.randint(165, 200), rng.randint(30, 70)
        cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), text]
        desc = f"espeak-ng:{voice}:s{speed}:p{pitch}"
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    elif engine == "flite":
        assert voice in heldout.FLITE_VOICES, voice
        stretch = round(rng.uniform(0.8, 0.95), 2)
        cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}", "-t", text, "-o", str(out)]
        desc = f"flite:{voice}:d{stretch}"
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    else:
        assert voice in heldout.FESTIVAL_VOICES, voice
        stretch = round(rng.uniform(0.85, 1.0), 2)
        said = text.replace("\\", " ").replace('"', " ")
        script = tmp / "say.scm"
        script.write_text(f"(voice_{voice})\n(Parameter.set 'Duration_Stretch {stretch})\n"
                          f"(utt.save.wave (utt.synth (Utterance Text \"{said}\")) \"{out}\" 'riff)\n")
        subprocess.run(["festival", "-b", str(script)], check=True, capture_output=True, timeout=120)
        desc = f"festival:{voice}:d{stretch}"
    x, rate = sf.read(str(out), dtype="float64", always_2d=True)
    return Utterance(_trim(x.mean(axis=1), rate), rate, desc)


def _trim(x: np.ndarray, rate: int) -> np.ndarray:
    """Cut the TTS's leading and trailing silence (50 dB under the loudest 10 ms), keep 50 ms."""
    hop = rate // 100
    e = np.mean(x[: len(x) // hop * hop].reshape(-1, hop) ** 2, axis=1) + 1e-20
    active = np.nonzero(10 * np.log10(e / e.max()) > -50)[0]
    keep = rate // 20
    return x[max(0, active[0] * hop - keep): (active[-1] + 1) * hop + keep]


def _at(u: Utterance, rate: int) -> np.ndarray:
    return u.audio if u.rate == rate else soxr.resample(u.audio, u.rate, rate).astype(np.float64)


def active_power(x: np.ndarray, rate: int) -> float:
    """Mean power of the 20 ms frames within ``ACTIVE_RANGE_DB`` of the loudest."""
    hop = rate // 50
    p = np.mean(x[: len(x) // hop * hop].reshape(-1, hop) ** 2, axis=1)
    return float(np.mean(p[p > p.max() * 10 ** (-ACTIVE_RANGE_DB / 10)]))


def mix(speech: np.ndarray, noise: np.ndarray | None, snr_db: float, level_dbfs: float,
        rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) with the speech at ``level_dbfs`` active level and ``snr_db`` active SNR."""
    n = int(LEAD_S * rate) + len(speech) + int(TAIL_S * rate)
    clean = np.zeros(n)
    clean[int(LEAD_S * rate): int(LEAD_S * rate) + len(speech)] = speech
    clean *= 10 ** (level_dbfs / 20) / math.sqrt(active_power(speech, rate))
    noisy = clean.copy()
    if noise is not None:
        p_speech = active_power(clean, rate)
        noise = noise[:n] / math.sqrt(np.mean(noise[:n] ** 2))
        noisy += noise * math.sqrt(p_speech / 10 ** (snr_db / 10))
    peak = float(np.max(np.abs(noisy)))
    if peak > PEAK_MAX:
        clean *= PEAK_MAX / peak
        noisy *= PEAK_MAX / peak
    return noisy, clean


def _noise(kind: str, seed: int, n: int, rate: int, babble: list[np.ndarray]) -> np.ndarray:
    assert seed >= heldout.NOISE_SEED_MIN
    rng = np.random.default_rng(seed)
    if kind == "babble":
        # noises.babble spaces talkers in 16 kHz samples: build at 16 kHz and resample.
        n16 = int(math.ceil(n * 16000 / rate)) + 16
        x = noises.babble(rng, n16, babble)
        return (x if rate == 16000 else soxr.resample(x.astype(np.float64), 16000, rate))[:n].astype(np.float64)
    return noises.GENERATORS[kind](rng, n, rate).astype(np.float64)


def _snr_tag(snr: float) -> str:
    return f"{'m' if snr < 0 else 'p'}{abs(int(snr)):02d}"


class Writer:
    """Writes one folder of the set: noisy/ and clean/ FLACs and noisy/manifest.csv."""

    FIELDS = ("file", "noise_type", "snr_db", "voice", "sentence", "noise_seed", "seconds")

    def __init__(self, root: Path, rate: int) -> None:
        self.root, self.rate, self.rows = root, rate, []  # type: ignore[var-annotated]
        for sub in ("noisy", "clean"):
            shutil.rmtree(root / sub, ignore_errors=True)
            (root / sub).mkdir(parents=True)

    def add(self, name: str, noisy: np.ndarray, clean: np.ndarray, **row: object) -> None:
        for sub, x in (("noisy", noisy), ("clean", clean)):
            sf.write(str(self.root / sub / f"{name}.flac"), x, self.rate, subtype="PCM_16", format="FLAC")
        self.rows.append({"file": f"{name}.flac", **row, "seconds": f"{len(noisy) / self.rate:.2f}"})

    def close(self) -> None:
        with open(self.root / "noisy" / "manifest.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.FIELDS, lineterminator="\n")
            w.writeheader()
            w.writerows(self.rows)


def build(out: Path) -> None:
    _check_voices()
    rng = random.Random(SPEECH_SEED)
    tmp = Path(tempfile.mkdtemp(prefix="hw_evalset_"))
    try:
        babble_pool = [_at(_speak(e, v, s, rng, tmp), 16000)
                       for s in heldout.SENTENCES[heldout.TARGET_SENTENCES:] for e, v in BABBLE_TALKERS[:2]]
        babble_pool += [_at(_speak(e, v, s, rng, tmp), 16000)
                        for i, s in enumerate(heldout.SENTENCES[heldout.TARGET_SENTENCES:])
                        for e, v in [BABBLE_TALKERS[2 + i % 4]]]
        w16, w8 = Writer(out / "16k", 16000), Writer(out / "8k", 8000)
        seed, sentence = heldout.NOISE_SEED_MIN, 0
        clips = [(k, s) for k in NOISE_TYPES for s in SNRS_DB] + [("none", math.inf)] * 2
        for i, (kind, snr) in enumerate(clips):
            engine, voice = TARGETS[i % len(TARGETS)]
            u = _speak(engine, voice, heldout.SENTENCES[sentence], rng, tmp)
            speech = _at(u, 16000)
            level = rng.uniform(*LEVEL_DBFS)
            n = int(LEAD_S * 16000) + len(speech) + int(TAIL_S * 16000)
            noise = None if kind == "none" else _noise(kind, seed, n, 16000, babble_pool)
            noisy, clean = mix(speech, noise, snr, level, 16000)
            name = f"{kind}_{_snr_tag(snr)}" if kind != "none" else f"cleanin_{i - len(clips) + 3}"
            row = {"noise_type": kind, "snr_db": "inf" if kind == "none" else str(snr), "voice": u.voice,
                   "sentence": str(sentence), "noise_seed": "" if kind == "none" else str(seed)}
            w16.add(name, noisy, clean, **row)
            if snr in SNRS_8K_DB:
                w8.add(name, soxr.resample(noisy, 16000, 8000), soxr.resample(clean, 16000, 8000), **row)
            seed += 1
            sentence += 1
        w16.close()
        w8.close()

        w48 = Writer(out / "48k", 48000)
        babble48 = babble_pool  # babble is built at 16 kHz (see _noise) and resampled
        seed = heldout.NOISE_SEED_MIN + 100
        for i, (kind, snr) in enumerate(CLIPS_48K):
            engine, voice = TARGETS_48K[i % len(TARGETS_48K)]
            u = _speak(engine, voice, heldout.SENTENCES[i], rng, tmp)
            speech = _at(u, 48000)
            n = int(LEAD_S * 48000) + len(speech) + int(TAIL_S * 48000)
            noisy, clean = mix(speech, _noise(kind, seed, n, 48000, babble48), snr, rng.uniform(*LEVEL_DBFS), 48000)
            w48.add(f"{kind}_{_snr_tag(snr)}", noisy, clean, noise_type=kind, snr_db=str(snr), voice=u.voice,
                    sentence=str(i), noise_seed=str(seed))
            seed += 1
        w48.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE, help="where 16k/, 8k/ and 48k/ go (default: evalset/)")
    args = ap.parse_args()
    build(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*.flac"))
    print(f"built {args.out}: {len(list(args.out.rglob('*.flac'))) // 2} pairs, {total / 1e6:.2f} MB of FLAC")
    return 0


if __name__ == "__main__":
    sys.exit(main())
