"""The public surface of server.dsp: exports, validation, latency, and no grpc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import server.dsp
from server.dsp import SUPPORTED_RATES, Denoiser, enhance

ROOT = Path(__file__).resolve().parents[2]


def test_exported_members() -> None:
    assert sorted(server.dsp.__all__) == sorted(["SUPPORTED_RATES", "Denoiser", "DenoiserPool", "enhance"])
    for name in server.dsp.__all__:
        assert getattr(server.dsp, name) is not None


def test_supported_rates() -> None:
    assert SUPPORTED_RATES == (8000, 16000, 24000, 32000, 44100, 48000)


@pytest.mark.parametrize("rate", [0, 11025, 22050, 96000, 16001])
def test_unsupported_rate_is_refused(rate: int) -> None:
    with pytest.raises(ValueError):
        Denoiser(rate)


@pytest.mark.parametrize("channels", [0, -1, 9, 100])
def test_channels_outside_1_to_8_are_refused(channels: int) -> None:
    with pytest.raises(ValueError):
        Denoiser(16000, channels)


@pytest.mark.parametrize("rate", SUPPORTED_RATES)
def test_latency_is_at_most_10_ms(rate: int) -> None:
    den = Denoiser(rate, 2)
    assert den.sample_rate == rate and den.channels == 2
    assert isinstance(den.latency_samples, int)
    assert 0 < den.latency_samples <= rate * 10 // 1000


def test_wrong_shape_is_refused() -> None:
    den = Denoiser(16000, 2)
    with pytest.raises(ValueError):
        den.process(np.zeros((100, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        den.process(np.zeros(100, dtype=np.float32))
    with pytest.raises(ValueError):
        den.process(np.zeros((100, 2), dtype=np.int16))


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_bad_attenuation_limit_is_refused(value: float) -> None:
    with pytest.raises(ValueError):
        Denoiser(16000, attenuation_limit_db=value)


def test_settings_round_trip() -> None:
    den = Denoiser(16000, attenuation_limit_db=12)
    assert den.attenuation_limit_db == 12.0
    den.attenuation_limit_db = None
    assert den.attenuation_limit_db is None
    assert den.bypass is False
    den.bypass = True
    assert den.bypass is True


def test_enhance_keeps_shape_and_length() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(16000 + 77) * 0.01).astype(np.float32)
    y = enhance(x, 16000)
    assert y.shape == x.shape and y.dtype == np.float32
    x2 = np.stack([x, -x], axis=1)
    y2 = enhance(x2, 16000)
    assert y2.shape == x2.shape
    np.testing.assert_allclose(y2[:, 0], y, atol=1e-6)  # channels batched: float rounding only


def test_imports_without_grpc() -> None:
    code = (
        "import sys\n"
        "sys.modules['grpc'] = None\n"
        "import server.dsp\n"
        "import numpy as np\n"
        "assert server.dsp.enhance(np.zeros(1600, dtype=np.float32), 16000).shape == (1600,)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'soundfile', 'sounddevice')"
        " and sys.modules[m] is not None]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
