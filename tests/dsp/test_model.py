"""Tests of the numpy inference of the learned band-gain model (server/dsp/model.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from server.dsp.model import DEFAULT_WEIGHTS, GainModel, band_centres_hz, band_weights, load_weights
from server.dsp.pitch import PitchFeatures
from server.dsp.stft import Stft

ROOT = Path(__file__).resolve().parents[2]
HAS_TORCH = importlib.util.find_spec("torch") is not None
RATES_FRAMES = [(8000, 256), (16000, 512), (24000, 768), (44100, 1411), (48000, 1536)]


def _random_weights(seed: int = 0, n_bands: int = 40, dense: int = 24, hidden: int = 16, df_bins: int = 0,
                    df_taps: int = 2, lo_dense: int = 8, pitch_dense: int = 0) -> dict:
    """Small random weights with the layout train.py exports (no torch needed); ``df_bins`` > 0
    adds the deep-filter layers, ``pitch_dense`` > 0 the periodicity features' layer."""
    rng = np.random.default_rng(seed)

    def r(*shape: int) -> np.ndarray:
        return rng.normal(0.0, 0.3, shape)

    df = {}
    if df_bins:
        df = {"dense_lo.weight": r(lo_dense, df_bins), "dense_lo.bias": r(lo_dense),
              "lo_mean": r(df_bins) - 6.0, "lo_std": np.abs(r(df_bins)) + 1.0,
              "df.weight": r(df_bins * df_taps * 2, hidden + lo_dense), "df.bias": r(df_bins * df_taps * 2),
              "df_taps": np.array(df_taps)}
    if pitch_dense:
        df.update({"dense_p.weight": r(pitch_dense, n_bands + 1), "dense_p.bias": r(pitch_dense)})
    gru_in = dense + (lo_dense if df_bins else 0) + pitch_dense
    return {
        **df,
        "centres_hz": band_centres_hz(n_bands),
        "feat_mean": r(n_bands) - 6.0, "feat_std": np.abs(r(n_bands)) + 1.0,
        "dense.weight": r(dense, n_bands), "dense.bias": r(dense),
        "gru1.weight_ih_l0": r(3 * hidden, gru_in), "gru1.weight_hh_l0": r(3 * hidden, hidden),
        "gru1.bias_ih_l0": r(3 * hidden), "gru1.bias_hh_l0": r(3 * hidden),
        "gru2.weight_ih_l0": r(3 * hidden, hidden), "gru2.weight_hh_l0": r(3 * hidden, hidden),
        "gru2.bias_ih_l0": r(3 * hidden), "gru2.bias_hh_l0": r(3 * hidden),
        "gain.weight": r(n_bands, dense + 2 * hidden), "gain.bias": r(n_bands),
        "vad.weight": r(1, hidden), "vad.bias": r(1),
    }


def _power(rng: np.random.Generator, channels: int, frame_len: int, frames: int) -> np.ndarray:
    spec = rng.normal(size=(frames, channels, frame_len // 2 + 1)) * 0.01
    spec *= np.exp(rng.normal(size=(frames, channels, 1)))  # varying level per frame
    return spec**2


def test_band_layout() -> None:
    c = band_centres_hz()
    assert c.size == 40 and c[0] == 0.0 and c[-1] == pytest.approx(8000.0)
    assert np.all(np.diff(c) >= 62.5 - 1e-9)
    freqs = np.arange(257) * 16000 / 512
    w = band_weights(freqs, c)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)  # gains interpolate exactly
    assert np.all(w.sum(axis=0) > 0)  # no empty band at 16 kHz


@pytest.mark.parametrize(("rate", "frame_len"), RATES_FRAMES)
def test_shapes_and_range(rate: int, frame_len: int) -> None:
    channels = 3
    m = GainModel(rate, frame_len, 200.0, channels, weights=_random_weights())
    p = _power(np.random.default_rng(1), channels, frame_len, 5)
    for frame in p:
        g, v = m.step(frame)
        assert g.shape == (channels, frame_len // 2 + 1) and v.shape == (channels,)
        assert np.all(np.isfinite(g)) and g.min() >= 0.0 and g.max() <= 1.0
        assert v.min() >= 0.0 and v.max() <= 1.0


def test_deterministic_reset_and_channels_independent() -> None:
    rng = np.random.default_rng(2)
    p = _power(rng, 2, 512, 30)
    w = _random_weights()
    m = GainModel(16000, 512, 200.0, 2, weights=w)
    first = np.stack([m.step(f)[0].copy() for f in p])
    m.reset()
    again = np.stack([m.step(f)[0].copy() for f in p])
    np.testing.assert_array_equal(first, again)
    mono = GainModel(16000, 512, 200.0, 1, weights=w)
    ch1 = np.stack([mono.step(f[1:2])[0].copy() for f in p])
    np.testing.assert_allclose(first[:, 1:2], ch1, rtol=0, atol=1e-12)


def test_gain_exponent() -> None:
    p = _power(np.random.default_rng(3), 1, 512, 10)
    w = _random_weights()
    a, b = GainModel(16000, 512, 200.0, weights=w), GainModel(16000, 512, 200.0, weights=w, gain_exponent=2.0)
    for f in p:
        ga, gb = a.step(f)[0].copy(), b.step(f)[0]
    # Interpolated squared band gains lie between the squared and the plain interpolated gains.
    assert np.all(gb >= ga**2 - 1e-12) and np.all(gb <= ga + 1e-12)


def test_shipped_weights_load() -> None:
    if not DEFAULT_WEIGHTS.exists():
        pytest.skip("no exported weights yet")
    w = load_weights()
    m = GainModel(48000, 1536, 600.0, 2)
    g, v = m.step(_power(np.random.default_rng(4), 2, 1536, 1)[0])
    assert g.shape == (2, 769) and np.all(np.isfinite(g))
    assert sum(v.size for k, v in w.items() if "." in k) < 200_000  # about 100k parameters


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (training-only dependency)")
def test_matches_torch() -> None:
    import torch

    sys.path.insert(0, str(ROOT / "training"))
    from train import FRAME_LEN, Frontend, GainNet, export_npz

    torch.manual_seed(0)
    net = GainNet()
    with torch.no_grad():
        net.feat_mean.uniform_(-8, -4)
        net.feat_std.uniform_(1, 2)
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(2, 16000)) * np.linspace(0.001, 0.3, 16000)).astype(np.float32)
    fe = Frontend()
    with torch.no_grad():
        power = fe.power(fe.stft(torch.from_numpy(x)))
        g_t, v_t, _ = net(fe.logband(power))
        gb_t = (g_t @ fe.w_synth).numpy()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "w.npz"
        export_npz(net, path)
        m = GainModel(16000, FRAME_LEN, float(np.sum(fe.window.numpy().astype(np.float64) ** 2)), 2, path)
    pw = power.numpy().astype(np.float64)
    for t in range(pw.shape[1]):
        g, v = m.step(pw[:, t])
        np.testing.assert_allclose(g, gb_t[:, t], atol=2e-5)
        np.testing.assert_allclose(v, v_t[:, t].numpy(), atol=2e-5)


@pytest.mark.parametrize(("rate", "frame_len"), RATES_FRAMES)
def test_deep_filter_shapes_and_bounds(rate: int, frame_len: int) -> None:
    m = GainModel(rate, frame_len, 200.0, 3, weights=_random_weights(df_bins=128, df_taps=3))
    assert (m.df_bins, m.df_taps) == (128, 3)
    state: dict[str, np.ndarray] = {}
    m.init_state(state, 3)
    p = _power(np.random.default_rng(7), 3, frame_len, 6)
    g, v, taps = m.run_full(state, p)
    assert g.shape == p.shape and v.shape == (6, 3)
    assert taps is not None and taps.shape == (6, 3, 128, 3) and np.iscomplexobj(taps)
    assert np.all(np.abs(taps.real) <= 1.0) and np.all(np.abs(taps.imag) <= 1.0)  # tanh
    assert np.all(np.isfinite(g)) and g.min() >= 0.0 and g.max() <= 1.0


def test_deep_filter_carries_past_frames_across_calls() -> None:
    """Hop by hop or all at once, the filter sees the same past frames; and a reset clears them."""
    w = _random_weights(df_bins=128, df_taps=3)
    m = GainModel(16000, 512, 200.0, 2, weights=w)
    rng = np.random.default_rng(8)
    spec = rng.normal(size=(12, 2, 257)) + 1j * rng.normal(size=(12, 2, 257))
    power = np.abs(spec) ** 2
    whole: dict[str, np.ndarray] = {}
    m.init_state(whole, 2)
    _, _, taps = m.run_full(whole, power)
    assert taps is not None
    out_whole = m.deep_filter(whole, spec, taps)
    steps: dict[str, np.ndarray] = {}
    m.init_state(steps, 2)
    out_steps = np.concatenate([m.deep_filter(steps, spec[t : t + 1], taps[t : t + 1]) for t in range(12)])
    np.testing.assert_allclose(out_steps, out_whole, rtol=0, atol=1e-12)
    # by hand: tap i multiplies the spectrum i frames back (zeros before the first)
    t = 5
    expect = sum(taps[t, :, :, i] * spec[t - i, :, :128] for i in range(3))
    np.testing.assert_allclose(out_whole[t], expect, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out_whole[0], taps[0, :, :, 0] * spec[0, :, :128], rtol=1e-6, atol=1e-9)
    m.init_state(steps, 2)
    np.testing.assert_array_equal(steps["model.past_lo"], 0.0)


def test_deep_filter_weights_need_their_low_layers() -> None:
    w = _random_weights(df_bins=128)
    del w["dense_lo.weight"]
    with pytest.raises(ValueError, match="dense_lo.weight"):
        GainModel(16000, 512, 200.0, weights=w)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (training-only dependency)")
@pytest.mark.parametrize("rank", [0, 16])
def test_deep_filter_matches_torch(rank: int) -> None:
    """The deep-filter model, with a full or a low-rank head: band gains, voice and filtered low
    bins as training computes them, fed in two chunks (the filter's past frames carry over in the
    row state)."""
    import torch

    sys.path.insert(0, str(ROOT / "training"))
    from train import FRAME_LEN, Frontend, GainNet, deep_filter, export_npz

    torch.manual_seed(1)
    net = GainNet(df_bins=128, df_rank=rank)
    with torch.no_grad():
        if rank:
            net.df_in.weight.normal_(0.0, 0.3)
        net.feat_mean.uniform_(-8, -4)
        net.feat_std.uniform_(1, 2)
        net.lo_mean.uniform_(-8, -4)
        net.lo_std.uniform_(1, 2)
        net.df.weight.normal_(0.0, 0.3)
        net.df.bias.normal_(0.0, 0.3)
    rng = np.random.default_rng(6)
    x = (rng.normal(size=(2, 16000)) * np.linspace(0.001, 0.3, 16000)).astype(np.float32)
    fe = Frontend()
    with torch.no_grad():
        spec = fe.stft(torch.from_numpy(x))
        power = fe.power(spec)
        g_t, v_t, c_t = net(fe.logband(power), fe.loglo(power, 128))
        assert c_t is not None
        filt_t = deep_filter(spec[..., :128], c_t).numpy()  # (rows, hops, 128)
        gb_t = (g_t @ fe.w_synth).numpy()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "w.npz"
        export_npz(net, path)
        m = GainModel(16000, FRAME_LEN, float(np.sum(fe.window.numpy().astype(np.float64) ** 2)), 2, path)
    assert (m.df_bins, m.df_taps) == (128, 2)
    pw = power.numpy().astype(np.float64).transpose(1, 0, 2)  # (hops, rows, bins)
    sp = spec.numpy().astype(np.complex128).transpose(1, 0, 2)
    state: dict[str, np.ndarray] = {}
    m.init_state(state, 2)
    outs = []
    for part in (slice(0, 37), slice(37, None)):
        g, v, taps = m.run_full(state, pw[part])
        assert taps is not None
        outs.append((g, v, m.deep_filter(state, sp[part], taps)))
    g = np.concatenate([o[0] for o in outs])
    v = np.concatenate([o[1] for o in outs])
    filt = np.concatenate([o[2] for o in outs])
    np.testing.assert_allclose(g, gb_t.transpose(1, 0, 2), atol=2e-5)
    np.testing.assert_allclose(v, v_t.numpy().T, atol=2e-5)
    scale = np.abs(filt_t).max()
    assert scale > 0.1  # the taps are far from zero: the comparison tests the filter
    np.testing.assert_allclose(filt, filt_t.transpose(1, 0, 2), atol=2e-5 * scale)


def test_a_narrowed_filter_keeps_its_bins_and_leaves_the_rest() -> None:
    """training/filter_bins.py keeps the head's outputs for the lowest bins: the narrowed model reads
    the same low bins and gives exactly the full model's taps on the bins it still filters."""
    sys.path.insert(0, str(ROOT / "training"))
    from filter_bins import narrow

    w = _random_weights(df_bins=128, df_taps=2)
    full = GainModel(16000, 512, 200.0, 2, weights=w)
    half = GainModel(16000, 512, 200.0, 2, weights=narrow(w, 64))
    assert (full.df_bins, full.lo_bins) == (128, 128) and (half.df_bins, half.lo_bins, half.df_taps) == (64, 128, 2)
    rng = np.random.default_rng(9)
    spec = rng.normal(size=(5, 2, 257)) + 1j * rng.normal(size=(5, 2, 257))
    outs = []
    for m in (full, half):
        state: dict[str, np.ndarray] = {}
        m.init_state(state, 2)
        g, _, taps = m.run_full(state, np.abs(spec) ** 2)
        assert taps is not None
        outs.append((g, taps, m.deep_filter(state, spec, taps)))
    np.testing.assert_array_equal(outs[1][0], outs[0][0])  # the band gains do not change
    np.testing.assert_allclose(outs[1][1], outs[0][1][:, :, :64], rtol=1e-6)
    assert outs[1][2].shape == (5, 2, 64)
    np.testing.assert_allclose(outs[1][2], outs[0][2][..., :64], rtol=1e-6)
    with pytest.raises(ValueError, match="--bins"):
        narrow(w, 129)


def test_periodicity_weights_need_their_features() -> None:
    m = GainModel(16000, 512, 200.0, 2, weights=_random_weights(pitch_dense=6))
    assert m.n_pitch == 41
    state: dict[str, np.ndarray] = {}
    m.init_state(state, 2)
    p = _power(np.random.default_rng(9), 2, 512, 4)
    with pytest.raises(ValueError, match="periodicity"):
        m.run_full(state, p)
    g0, _, _ = m.run_full(state, p, np.zeros((4, 2, 41)))
    m.init_state(state, 2)
    g1, _, _ = m.run_full(state, p, np.ones((4, 2, 41)))
    assert g0.shape == p.shape and not np.allclose(g0, g1)  # the features reach the gains


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (training-only dependency)")
def test_periodicity_model_matches_torch() -> None:
    """A model with periodicity features (training's --pitch): the same gains and voice as torch,
    with the features computed by the server's own code in both."""
    import torch

    sys.path.insert(0, str(ROOT / "training"))
    from train import FRAME_LEN, Frontend, GainNet, export_npz

    torch.manual_seed(2)
    net = GainNet(pitch=True)
    with torch.no_grad():
        net.feat_mean.uniform_(-8, -4)
        net.feat_std.uniform_(1, 2)
        net.gru1.weight_ih_l0.normal_(0.0, 0.3)
    rng = np.random.default_rng(7)
    t = np.arange(16000) / 16000
    voice = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 12))
    x = (0.05 * voice[None] + rng.normal(size=(2, 16000)) * np.linspace(0.001, 0.1, 16000)).astype(np.float32)
    fe = Frontend()
    with torch.no_grad():
        power = fe.power(fe.stft(torch.from_numpy(x)))
        pf = fe.pitch(torch.from_numpy(x))
        g_t, v_t, _ = net(fe.logband(power), None, pf)
        gb_t = (g_t @ fe.w_synth).numpy()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "w.npz"
        export_npz(net, path)
        m = GainModel(16000, FRAME_LEN, float(np.sum(fe.window.numpy().astype(np.float64) ** 2)), 2, path)
    stft = Stft(FRAME_LEN, 160)
    pitch = PitchFeatures(16000, 160, stft.analysis, m.band_matrix)
    state: dict[str, np.ndarray] = {}
    stft.init_state(state, 2)  # type: ignore[arg-type]
    pitch.init_state(state, 2)  # type: ignore[arg-type]
    m.init_state(state, 2)  # type: ignore[arg-type]
    xs = x.astype(np.float64)
    pw = power.numpy().astype(np.float64).transpose(1, 0, 2)  # (hops, rows, bins)
    gains = []
    for first, last in ((0, 37), (37, 100)):  # two calls: the state carries over
        samples = xs[:, first * 160 : last * 160]
        spec, _ = stft.analyze(state, samples)  # type: ignore[arg-type]
        g, _ = m.run(state, pw[first:last], pitch.run(state, samples, spec))  # type: ignore[arg-type]
        gains.append(g)
    np.testing.assert_allclose(np.concatenate(gains), gb_t.transpose(1, 0, 2), atol=5e-5)
