"""Rebuild the training data from installable sources, with a fixed seed.

    OMP_NUM_THREADS=1 .venv/bin/python training/make_data.py [--out training/data] [--seed 20251126]
        [--noise-seed 1127]

Speech: sentences from ``sentences.py`` spoken by Debian's TTS voices, one
synthesis process at a time (espeak-ng variants, flite voices, festival
diphone voices), each with random speaking rate and pitch, resampled
to 16 kHz, half of them also re-pitched by a small resampling factor. Needs
``apt-get install espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k``.

Noise: per type a bank of clips from ``noises.py`` plus babble (3-8 talkers at
several levels, sometimes one or two dominant) and one or two interfering talkers
("talkers"), made of TTS utterances that are kept out of the speech set, and a bank of
room impulse responses from the image method (``noises.room_impulse_response``, applied
on the fly in ``train.py``), all drawn from one generator seeded with ``--noise-seed``.

Held out (``heldout.py``): the evaluation set's voices (festival ``cmu_us_slt_arctic_hts``,
flite ``rms``, espeak-ng ``+f4`` and ``+m7``) are left out of the voice lists below, a
generated sentence equal to one of its sentences is drawn again, and the noise seed must be
below ``heldout.NOISE_SEED_MIN`` (the evaluation set's noise seeds start there).

Output (under ``--out``): ``speech.npy`` (float16, all utterances end to end),
``speech_index.npy`` (start, length per utterance), ``noise_<type>.npy``
(float16, clips end to end, unit RMS each), ``rir.npy`` and ``rir_early.npy``
(float32, ``(N_RIRS, RIR_LEN)``) and ``manifest.json``. Mixing
(SNR, level, colouration) happens on the fly in ``train.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import heldout  # noqa: E402
import noises  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import soxr  # noqa: E402
from sentences import make_sentence  # noqa: E402

SR = 16000
SEED = 20251126
NOISE_SEED = 1127  # below heldout.NOISE_SEED_MIN; up to issue #16 it was SEED + 1
ESPEAK_LANGS = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc",
                "en-gb-x-gbclan", "en-gb-x-gbcwmd")
_ALL_ESPEAK_VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+m8", "+f1", "+f2", "+f3",
                   "+f4", "+f5", "+klatt", "+klatt2", "+klatt3", "+klatt4", "+croak", "+Andy", "+Annie",
                   "+edward", "+steph", "+Denis", "+linda", "+john", "+paul", "+belinda", "+benjamin",
                   "+grandma", "+grandpa", "+aunty", "+adam", "+anika", "+david", "+robert", "+victor",
                   "+zac", "+max", "+Alex", "+Gene", "+Lee", "+Mike", "+shelby", "+quincy")
# The held-out voices are removed here, once, so no draw below can pick them.
ESPEAK_VARIANTS = tuple(v for v in _ALL_ESPEAK_VARIANTS if v not in heldout.ESPEAK_VARIANTS)
FLITE_VOICES = tuple(v for v in ("kal", "kal16", "awb", "rms", "slt") if v not in heldout.FLITE_VOICES)
FESTIVAL_VOICES = tuple(v for v in ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
                        if v not in heldout.FESTIVAL_VOICES)
# Utterances per engine (1-3 sentences each, about 5 s on average).
N_ESPEAK, N_FLITE, N_FESTIVAL = 1300, 650, 480
N_BABBLE_UTTS = 900          # extra espeak/flite/festival utterances used only inside babble and talkers
NOISE_CLIPS_PER_TYPE = 36
N_RIRS = 400
RIR_LEN = 16000  # 1 s: RT60s up to 0.9 s fit
NOISE_CLIP_S = 12.0


def _load(path: Path) -> np.ndarray:
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != SR:
        x = soxr.resample(x, sr, SR)
    return x.astype(np.float32)


def _trim(x: np.ndarray, keep_s: float = 0.15) -> np.ndarray:
    """Cut leading/trailing silence (below -50 dB of the peak frame), keep a margin."""
    fr = x[: len(x) // 160 * 160].reshape(-1, 160)
    e = 10 * np.log10(np.mean(fr**2, axis=1) + 1e-12)
    act = np.nonzero(e > e.max() - 50)[0]
    if len(act) == 0:
        return x
    k = int(keep_s * SR)
    return x[max(0, act[0] * 160 - k): min(len(x), (act[-1] + 1) * 160 + k)]


def make_paragraph(rng: random.Random, n_sentences: int) -> str:
    """``n_sentences`` training sentences; one that is a held-out sentence is drawn again."""
    out = []
    while len(out) < n_sentences:
        sentence = make_sentence(rng)
        if not heldout.is_heldout_sentence(sentence):
            out.append(sentence)
    return " ".join(out)


def _run(cmd: list[str], stdin: str | None = None) -> None:
    subprocess.run(cmd, input=stdin, text=True, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=600)


def synth_espeak(rng: random.Random, text: str, out: Path) -> str:
    voice = rng.choice(ESPEAK_LANGS) + rng.choice(ESPEAK_VARIANTS)
    assert not heldout.is_heldout_espeak(voice)
    speed, pitch = rng.randint(110, 220), rng.randint(15, 90)
    _run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), text])
    return f"espeak-ng:{voice}:s{speed}:p{pitch}"


def synth_flite(rng: random.Random, text: str, out: Path) -> str:
    voice = rng.choice(FLITE_VOICES)
    stretch = round(rng.uniform(0.8, 1.3), 2)
    cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}"]
    if rng.random() < 0.5:
        f0 = rng.randint(80, 220) if voice != "slt" else rng.randint(140, 260)
        cmd += ["--setf", f"int_f0_target_mean={f0}"]
    _run(cmd + ["-t", text, "-o", str(out)])
    return f"flite:{voice}:d{stretch}"


def synth_festival_batch(rng: random.Random, items: list[tuple[str, Path]]) -> list[str]:
    """One festival process per voice for many utterances (start-up is slow)."""
    descs = []
    by_voice: dict[str, list[str]] = {v: [] for v in FESTIVAL_VOICES}
    for text, out in items:
        voice = rng.choice(FESTIVAL_VOICES)
        stretch = round(rng.uniform(0.85, 1.25), 2)
        t = text.replace("\\", " ").replace('"', " ")
        by_voice[voice].append(f"(Parameter.set 'Duration_Stretch {stretch})\n"
                               f"(utt.save.wave (utt.synth (Utterance Text \"{t}\")) \"{out}\" 'riff)\n")
        descs.append(f"festival:{voice}:d{stretch}")
    for voice, lines in by_voice.items():
        if not lines:
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".scm", delete=False) as f:
            f.write(f"(voice_{voice})\n" + "".join(lines))
            script = f.name
        _run(["festival", "-b", script])
        os.unlink(script)
    return descs


def build_speech(out: Path, seed: int) -> tuple[list[np.ndarray], list[str], list[np.ndarray]]:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="hw_tts_"))
    jobs = ([("espeak", i) for i in range(N_ESPEAK)] + [("flite", i) for i in range(N_FLITE)]
            + [("festival", i) for i in range(N_FESTIVAL)]
            + [("babble_espeak", i) for i in range(N_BABBLE_UTTS * 2 // 3)]
            + [("babble_flite", i) for i in range(N_BABBLE_UTTS // 4)]
            + [("babble_festival", i) for i in range(N_BABBLE_UTTS - N_BABBLE_UTTS * 2 // 3 - N_BABBLE_UTTS // 4)])
    wavs: list[tuple[str, Path, str]] = []
    fest_items = []
    t0 = time.time()
    for kind, i in jobs:
        text = make_paragraph(rng, rng.choice((1, 1, 2, 2, 3)))
        path = tmp / f"{kind}_{i:05d}.wav"
        if kind.endswith("espeak"):
            wavs.append((kind, path, synth_espeak(rng, text, path)))
        elif kind.endswith("flite"):
            wavs.append((kind, path, synth_flite(rng, text, path)))
        else:
            fest_items.append((kind, text, path))
    descs = synth_festival_batch(rng, [(t, p) for _, t, p in fest_items])
    wavs += [(k, p, d) for (k, _, p), d in zip(fest_items, descs, strict=True)]
    print(f"tts done in {time.time() - t0:.0f} s", flush=True)

    nrng = np.random.default_rng(seed)
    speech, meta, babble_pool = [], [], []
    for kind, path, desc in wavs:
        if not path.exists():
            continue
        x = _trim(_load(path))
        if len(x) < SR // 2:
            continue
        if nrng.random() < 0.5:  # re-pitch and re-time by up to +-8 %
            fct = nrng.uniform(0.92, 1.08)
            x = soxr.resample(x, SR, SR * fct).astype(np.float32)
            desc += f":rs{fct:.3f}"
        x = x / (np.sqrt(np.mean(x**2)) + 1e-9) * 0.05
        if kind.startswith("babble"):
            babble_pool.append(x)
        else:
            speech.append(x)
            meta.append(desc)
    shutil.rmtree(tmp)
    return speech, meta, babble_pool


def build_noise(out: Path, noise_seed: int, babble_pool: list[np.ndarray]) -> dict[str, int]:
    if noise_seed >= heldout.NOISE_SEED_MIN:
        raise SystemExit(f"--noise-seed {noise_seed}: seeds from {heldout.NOISE_SEED_MIN} up are the evaluation set's")
    rng = np.random.default_rng(noise_seed)
    n = int(NOISE_CLIP_S * SR)
    counts = {}
    speech_gens = {"babble": noises.babble, "talkers": noises.talkers}
    for name, gen in [*noises.GENERATORS.items(), *((k, None) for k in speech_gens)]:
        clips = []
        for _ in range(NOISE_CLIPS_PER_TYPE):
            x = speech_gens[name](rng, n, babble_pool) if gen is None else gen(rng, n, SR)
            clips.append(x.astype(np.float16))
        np.save(out / f"noise_{name}.npy", np.concatenate(clips))
        counts[name] = len(clips)
        print(f"noise {name}: {len(clips)} x {NOISE_CLIP_S} s", flush=True)
    rirs, early, rt60 = np.zeros((N_RIRS, RIR_LEN), np.float32), np.zeros((N_RIRS, RIR_LEN), np.float32), []
    for i in range(N_RIRS):
        h, e, t = noises.room_impulse_response(rng, SR)
        rirs[i, : min(RIR_LEN, h.size)] = h[:RIR_LEN]
        early[i, : min(RIR_LEN, e.size)] = e[:RIR_LEN]
        rt60.append(t)
    np.save(out / "rir.npy", rirs)
    np.save(out / "rir_early.npy", early)
    print(f"rooms: {N_RIRS} impulse responses, RT60 {min(rt60):.2f}-{max(rt60):.2f} s", flush=True)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "data"))
    ap.add_argument("--seed", type=int, default=SEED, help="speech: sentences, voices, settings")
    ap.add_argument("--noise-seed", type=int, default=NOISE_SEED,
                    help=f"noise clips, babble and rooms (below {heldout.NOISE_SEED_MIN}: held out above)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    speech, meta, babble_pool = build_speech(out, args.seed)
    lens = np.array([len(x) for x in speech])
    idx = np.stack([np.concatenate([[0], np.cumsum(lens)[:-1]]), lens], axis=1)
    np.save(out / "speech.npy", np.concatenate(speech).astype(np.float16))
    np.save(out / "speech_index.npy", idx)
    print(f"speech: {len(speech)} utterances, {lens.sum() / SR / 3600:.2f} h", flush=True)
    counts = build_noise(out, args.noise_seed, babble_pool)
    manifest = {"seed": args.seed, "noise_seed": args.noise_seed, "rirs": N_RIRS, "sample_rate": SR,
                "utterances": meta,
                "speech_hours": float(lens.sum() / SR / 3600), "noise_clips": counts,
                "noise_clip_s": NOISE_CLIP_S, "build_seconds": round(time.time() - t0)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
