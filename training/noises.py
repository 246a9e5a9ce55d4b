"""Synthetic noise generators for training (all numpy, 16 kHz by default).

Every generator has the signature ``gen(rng, n, sr) -> float32 array`` of
length ``n`` with roughly unit RMS (the mixer sets the level). Each draws its
own parameters from ``rng`` so every clip is a different instance of its type.
Babble needs TTS speech and is built in ``make_data.py`` from ``speech_pool``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import signal

__all__ = ["GENERATORS", "coloured", "babble", "talkers", "room_impulse_response"]


def _unit(x: np.ndarray) -> np.ndarray:
    x = x - x.mean()
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def coloured(rng: np.random.Generator, n: int, sr: int, slope_db_oct: float, hp_hz: float = 20.0) -> np.ndarray:
    """Gaussian noise with a power spectrum falling ``slope_db_oct`` dB per octave."""
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.fft.rfftfreq(n, 1.0 / sr)
    f[0] = f[1]
    amp = (f / 1000.0) ** (slope_db_oct / (20 * np.log10(2)))
    amp[f < hp_hz] *= (f[f < hp_hz] / hp_hz) ** 2
    return _unit(np.fft.irfft(spec * amp, n))


def white(rng, n, sr):
    return _unit(rng.standard_normal(n))


def pink(rng, n, sr):
    return coloured(rng, n, sr, rng.uniform(-4.0, -2.0))


def brown(rng, n, sr):
    return coloured(rng, n, sr, rng.uniform(-7.0, -5.0), hp_hz=rng.uniform(15, 60))


def _wobble(rng, n, sr, depth, rate_hz):
    """A slow random frequency deviation (relative), smooth over time."""
    k = max(4, int(n / sr * rate_hz) + 4)
    pts = rng.standard_normal(k) * depth
    return np.interp(np.arange(n), np.linspace(0, n, k), pts)


def _harmonics(rng, n, sr, f0_track, n_harm, decay, odd_boost=1.0, jitter=0.0):
    """Sum of harmonics of a (time-varying) fundamental, up to Nyquist."""
    phase0 = 2 * np.pi * np.cumsum(f0_track) / sr
    out = np.zeros(n)
    f0max = float(np.max(f0_track))
    for h in range(1, n_harm + 1):
        if h * f0max >= sr / 2 * 0.95:
            break
        a = h ** (-decay) * (odd_boost if h % 2 else 1.0) * np.exp(jitter * rng.standard_normal())
        out += a * np.sin(h * phase0 + rng.uniform(0, 2 * np.pi))
    return out


def hum(rng, n, sr):
    f0 = rng.choice([50.0, 60.0]) * (1 + rng.uniform(-0.01, 0.01))
    track = f0 * (1 + _wobble(rng, n, sr, 0.002, 0.5))
    x = _harmonics(rng, n, sr, track, rng.integers(10, 60), rng.uniform(0.3, 1.2), rng.uniform(1, 4), 0.5)
    return _unit(_unit(x) + rng.uniform(0.0, 0.2) * coloured(rng, n, sr, -3.0))


def _lowpass(x, sr, fc, order=2):
    b, a = signal.butter(order, min(fc, sr / 2 * 0.95) / (sr / 2), "low")
    return signal.lfilter(b, a, x)


def _am(rng, n, sr, depth, rate_hz):
    return 1 + depth * np.tanh(_wobble(rng, n, sr, 1.0, rate_hz))


def fan(rng, n, sr):
    base = _lowpass(coloured(rng, n, sr, rng.uniform(-3, -1)), sr, rng.uniform(500, 4000))
    blade = rng.uniform(20, 120)
    tone = _harmonics(rng, n, sr, blade * (1 + _wobble(rng, n, sr, 0.003, 0.3)), 12, 1.0)
    motor = np.sin(2 * np.pi * rng.uniform(80, 400) * np.arange(n) / sr)
    x = _unit(base) + rng.uniform(0.1, 0.8) * _unit(tone) + rng.uniform(0.0, 0.3) * motor
    return _unit(x * _am(rng, n, sr, rng.uniform(0.02, 0.2), 0.5))


def car(rng, n, sr):
    rpm = rng.uniform(900, 3500) * (1 + _wobble(rng, n, sr, 0.15, 0.3))
    firing = rpm / 60 * rng.choice([2.0, 3.0])  # 4- or 6-cylinder four-stroke
    eng = _harmonics(rng, n, sr, firing, 30, rng.uniform(0.8, 1.6), 1.0, 0.4)
    rumble = _lowpass(rng.standard_normal(n), sr, rng.uniform(80, 250), 4)
    road = _lowpass(coloured(rng, n, sr, -3.0), sr, rng.uniform(800, 3000))
    wind = coloured(rng, n, sr, -1.5) * _am(rng, n, sr, 0.3, 1.0)
    x = (_unit(eng) * rng.uniform(0.3, 1) + _unit(rumble) * rng.uniform(0.5, 1.5)
         + _unit(road) * rng.uniform(0.2, 1) + _unit(wind) * rng.uniform(0.05, 0.4))
    return _unit(x)


def _click(rng, sr, length_s, f_res, q_decay, loud):
    m = int(length_s * sr)
    t = np.arange(m) / sr
    env = np.exp(-t / q_decay)
    x = rng.standard_normal(m) * env
    for fr in f_res:
        x += 0.8 * np.sin(2 * np.pi * fr * t + rng.uniform(0, 6.28)) * np.exp(-t / (q_decay * 2))
    return loud * x


def keyboard(rng, n, sr):
    x = np.zeros(n)
    t = int(rng.uniform(0, 0.3) * sr)
    speed = rng.uniform(3, 10)  # keys per second within a burst
    res = rng.uniform(1500, 6000, size=3)
    while t < n:
        if rng.random() < 0.08:  # pause between words or bursts
            t += int(rng.uniform(0.3, 1.5) * sr)
            continue
        loud = rng.uniform(0.4, 1.0) * (2.0 if rng.random() < 0.15 else 1.0)
        c = _click(rng, sr, 0.03, res * rng.uniform(0.8, 1.2, 3), rng.uniform(0.002, 0.008), loud)
        rel = _click(rng, sr, 0.02, res * rng.uniform(0.8, 1.2, 3), rng.uniform(0.001, 0.005), loud * 0.5)
        for off, cl in ((t, c), (t + int(rng.uniform(0.05, 0.12) * sr), rel)):
            e = min(n, off + len(cl))
            if off < n:
                x[off:e] += cl[: e - off]
        t += int(rng.exponential(1.0 / speed) * sr) + int(0.04 * sr)
    x += 0.01 * rng.standard_normal(n)
    return _unit(x)


def clicks(rng, n, sr):
    """Sparse impulsive transients: door knocks, taps, cutlery, pops."""
    x = 0.003 * rng.standard_normal(n)
    k = rng.poisson(n / sr * rng.uniform(0.5, 4))
    for _ in range(k):
        off = rng.integers(0, n)
        kind = rng.integers(3)
        if kind == 0:  # low knock
            cl = _click(rng, sr, 0.12, rng.uniform(80, 400, 2), rng.uniform(0.01, 0.03), 1.0)
        elif kind == 1:  # metallic clink, long ring
            cl = _click(rng, sr, 0.3, rng.uniform(2000, 7000, 3), rng.uniform(0.02, 0.08), 0.6)
        else:  # pop
            cl = _click(rng, sr, 0.01, [], rng.uniform(0.0005, 0.002), 2.0)
        e = min(n, off + len(cl))
        x[off:e] += cl[: e - off] * rng.uniform(0.3, 1.0)
    return _unit(x)


_NOTE = 2 ** (np.arange(-24, 25) / 12.0)


def music(rng, n, sr):
    bpm = rng.uniform(70, 150)
    beat = int(60 / bpm * sr)
    root = rng.uniform(110, 220)
    t = np.arange(n) / sr
    x = np.zeros(n)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    pos = 0
    timbre_decay = rng.uniform(0.6, 2.0)
    while pos < n:
        chord_root = root * 2 ** (rng.choice([0, 5, 7, 9, -3]) / 12)
        bar = 4 * beat
        seg = slice(pos, min(n, pos + bar))
        tt = t[seg] - t[pos]
        for iv in (0, 4 if rng.random() < 0.6 else 3, 7):  # chord pad
            f = chord_root * 2 ** (iv / 12)
            for h in range(1, 6):
                if h * f < sr / 2:
                    x[seg] += 0.3 * h ** (-timbre_decay) * np.sin(2 * np.pi * h * f * tt) * np.exp(-tt * 0.8)
        x[seg] += 0.6 * np.sin(2 * np.pi * chord_root / 2 * tt) * np.exp(-(tt % (beat / sr)) * 4)  # bass
        for b in range(8):  # melody in eighth notes
            s0 = pos + b * beat // 2
            if s0 >= n or rng.random() < 0.25:
                continue
            m = min(n - s0, beat // 2)
            tn = np.arange(m) / sr
            f = chord_root * 2 * 2 ** (rng.choice(scale) / 12)
            env = np.minimum(1, tn * 200) * np.exp(-tn * rng.uniform(3, 10))
            for h in range(1, 8):
                if h * f < sr / 2:
                    x[s0:s0 + m] += 0.4 * h ** (-timbre_decay) * np.sin(2 * np.pi * h * f * tn) * env
        for b in range(4):  # off-beat hi-hat
            s0 = pos + b * beat + beat // 2
            if s0 < n:
                m = min(n - s0, int(0.05 * sr))
                hh = rng.standard_normal(m) * np.exp(-np.arange(m) / sr / 0.01)
                x[s0:s0 + m] += 0.3 * np.diff(np.concatenate([[0], hh]))
        pos += bar
    return _unit(x)


def vacuum(rng, n, sr):
    """Hair dryer / vacuum cleaner: strong band noise with a whining motor."""
    lo, hi = sorted(rng.uniform(200, 7000, 2))
    b, a = signal.butter(2, [max(lo, 50) / (sr / 2), min(hi + 500, sr / 2 * 0.95) / (sr / 2)], "band")
    x = _unit(signal.lfilter(b, a, rng.standard_normal(n)))
    f = rng.uniform(300, 1500) * (1 + _wobble(rng, n, sr, 0.01, 0.5))
    whine = _harmonics(rng, n, sr, f, 6, 1.0)
    return _unit(x + rng.uniform(0.1, 0.6) * _unit(whine) + 0.3 * coloured(rng, n, sr, -3))


def traffic(rng, n, sr):
    """Street: brown rumble plus cars passing by (swelling band noise)."""
    x = coloured(rng, n, sr, -6.0) * rng.uniform(0.3, 1.0)
    k = rng.poisson(n / sr * rng.uniform(0.1, 0.5)) + 1
    for _ in range(k):
        c = rng.integers(0, n)
        w = rng.uniform(1.0, 4.0) * sr
        env = np.exp(-0.5 * ((np.arange(n) - c) / (w / 3)) ** 2)
        car_n = _lowpass(coloured(rng, n, sr, -2.0), sr, rng.uniform(1000, 5000))
        x += env * car_n * rng.uniform(1, 4)
    return _unit(x)


def tones(rng, n, sr):
    """Beeps, alarms and sirens (narrow-band and non-stationary)."""
    t = np.arange(n) / sr
    kind = rng.integers(3)
    if kind == 0:  # siren sweep
        f = rng.uniform(500, 1500) * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 3) * t))
        x = _harmonics(rng, n, sr, f, 5, 1.5)
    elif kind == 1:  # periodic beeps
        f = rng.uniform(400, 4000)
        period, dur = rng.uniform(0.3, 2.0), rng.uniform(0.05, 0.5)
        gate = ((t % period) < dur).astype(float)
        gate = np.convolve(gate, np.ones(40) / 40, "same")
        x = np.sin(2 * np.pi * f * t) * gate
    else:  # ringing phone
        f1, f2 = rng.uniform(400, 1200, 2)
        gate = ((t % 3.0) < 1.2).astype(float) * (np.sin(2 * np.pi * 20 * t) > 0)
        x = (np.sin(2 * np.pi * f1 * t) + np.sin(2 * np.pi * f2 * t)) * gate
    return _unit(x + 0.02 * rng.standard_normal(n))


def rain(rng, n, sr):
    """Rain / crackle: dense random small impulses over a pink bed."""
    dens = rng.uniform(50, 2000)
    imp = (rng.random(n) < dens / sr) * rng.standard_normal(n) ** 3
    b, a = signal.butter(2, rng.uniform(1000, 6000) / (sr / 2), "high")
    return _unit(signal.lfilter(b, a, imp) + rng.uniform(0.1, 1) * coloured(rng, n, sr, -2.5))


def _talker(rng: np.random.Generator, n: int, speech_pool: list[np.ndarray], gap_s: tuple[float, float]) -> np.ndarray:
    """One talker: utterances of the pool end to end with pauses, unit RMS per utterance."""
    x = np.zeros(n)
    pos = int(rng.integers(-n // 4, n // 3))
    while pos < n:
        u = speech_pool[rng.integers(len(speech_pool))]
        s0 = max(pos, 0)
        seg = u[s0 - pos: s0 - pos + (n - s0)]
        x[s0:s0 + len(seg)] += seg / (np.sqrt(np.mean(u**2)) + 1e-9)
        pos += len(u) + int(rng.uniform(*gap_s) * 16000)
    return x


def babble(rng: np.random.Generator, n: int, speech_pool: list[np.ndarray]) -> np.ndarray:
    """3-8 overlapping TTS talkers at levels spread over +-6 dB; in 40 % one or two of them
    are 4-12 dB louder than the rest (a near table in a cafe, a colleague across the desk)."""
    x = np.zeros(n)
    k = int(rng.integers(3, 9))
    levels_db = rng.uniform(-6, 6, size=k)
    if rng.random() < 0.4:
        levels_db[: int(rng.integers(1, 3))] += rng.uniform(4, 12)
    for lv in levels_db:
        x += _talker(rng, n, speech_pool, (0.05, 0.6)) * 10 ** (lv / 20)
    return _unit(x)


def talkers(rng: np.random.Generator, n: int, speech_pool: list[np.ndarray]) -> np.ndarray:
    """One or two interfering voices (a TV, someone on the phone nearby): the hardest case for a
    band-gain model, since the interferer's harmonics sit between the target's."""
    x = _talker(rng, n, speech_pool, (0.1, 1.2))
    if rng.random() < 0.5:
        x += _talker(rng, n, speech_pool, (0.1, 1.2)) * 10 ** (rng.uniform(-8, 4) / 20)
    return _unit(x)


def room_impulse_response(rng: np.random.Generator, sr: int = 16000, early_ms: float = 50.0,
                          max_order: int = 12) -> tuple[np.ndarray, np.ndarray, float]:
    """A shoebox room impulse response by the image method (Allen & Berkley, JASA 65(4), 1979).

    Room 3x3x2.4 .. 12x10x4 m, RT60 0.15 - 0.9 s (Sabine: one absorption for all walls), source
    0.3 - 4 m from the microphone. Images up to ``max_order`` reflections per axis; past them a
    Gaussian tail that decays at the room's rate continues the response, so long RT60s keep
    their late energy. Returns (full response, its direct path + first ``early_ms``, RT60 s),
    both scaled so the direct path has unit amplitude.
    """
    dims = np.array([rng.uniform(3, 12), rng.uniform(3, 10), rng.uniform(2.4, 4.0)])
    rt60 = rng.uniform(0.15, 0.9)
    volume, surface = np.prod(dims), 2 * (dims[0] * dims[1] + dims[0] * dims[2] + dims[1] * dims[2])
    alpha = min(0.95, 0.161 * volume / (rt60 * surface))
    beta = np.sqrt(1.0 - alpha)  # wall reflection coefficient (amplitude)
    mic = dims * rng.uniform(0.2, 0.8, size=3)
    mic[2] = rng.uniform(0.8, 1.8)
    for _ in range(100):
        src = dims * rng.uniform(0.1, 0.9, size=3)
        src[2] = rng.uniform(1.0, 2.0)
        if 0.3 <= np.linalg.norm(src - mic) <= 4.0:
            break
    c = 343.0
    length = int(rt60 * 1.1 * sr)
    h = np.zeros(length + 1)
    r = np.arange(-max_order, max_order + 1)
    pos, refl = [], []
    for axis in range(3):
        # image coordinate for index m and parity q: (1 - 2q) src + 2 m L; reflections |m - q| + |m|
        coords, counts = [], []
        for q in (0, 1):
            coords.append((1 - 2 * q) * src[axis] + 2 * r * dims[axis])
            counts.append(np.abs(r - q) + np.abs(r))
        pos.append(np.concatenate(coords) - mic[axis])
        refl.append(np.concatenate(counts))
    dx, dy, dz = np.meshgrid(*pos, indexing="ij")
    nx, ny, nz = np.meshgrid(*refl, indexing="ij")
    dist = np.sqrt(dx**2 + dy**2 + dz**2).ravel()
    amp = (beta ** (nx + ny + nz).ravel()) / np.maximum(dist, 0.1)
    delay = dist / c * sr
    keep = delay < length
    np.add.at(h, np.round(delay[keep]).astype(int), amp[keep])
    d0 = float(np.min(dist)) / c * sr
    # late tail beyond the images' reach (they thin out after max_order reflections)
    t_img = (2 * max_order * float(np.min(dims)) / c) * sr
    if t_img < length:
        t = np.arange(length + 1)
        decay = 10 ** (-3.0 * (t - d0) / (rt60 * sr))  # -60 dB at RT60, amplitude
        tail = rng.standard_normal(length + 1) * decay
        start = int(t_img)
        ref = h[max(0, start - sr // 50):start]
        ref_rms = np.sqrt(np.mean(ref**2)) if ref.size else 0.0
        tail_rms = np.sqrt(np.mean(tail[max(0, start - sr // 50):start] ** 2)) + 1e-12
        ramp = np.clip((t - start) / (0.01 * sr), 0.0, 1.0)
        h = h + tail * ramp * (ref_rms / tail_rms)
    h /= np.max(np.abs(h[: int(d0) + 2])) + 1e-12
    early = h.copy()
    early[int(d0 + early_ms * 1e-3 * sr):] = 0.0
    return h.astype(np.float32), early.astype(np.float32), float(rt60)


GENERATORS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "white": white, "pink": pink, "brown": brown, "hum": hum, "fan": fan, "car": car,
    "keyboard": keyboard, "clicks": clicks, "music": music, "vacuum": vacuum,
    "traffic": traffic, "tones": tones, "rain": rain,
}
