"""``hushwire enhance`` (through the server) and ``hushwire denoise`` (local) on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ServerProcess, energy_db, eval_pair, run_cli, white_noise_file

from server.dsp import Denoiser


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate", "channels"),
    [("WAV", "PCM_16", 16000, 1), ("FLAC", "PCM_24", 48000, 2), ("WAV", "FLOAT", 22050, 1)],
)
def test_enhance_keeps_format_rate_channels_and_length(
    server: ServerProcess, api_key: str, tmp_path: Path, fmt: str, subtype: str, rate: int, channels: int
) -> None:
    ext = fmt.lower()
    src = tmp_path / f"in.{ext}"
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((int(rate * 1.5), channels)) * 0.03).astype(np.float32)
    sf.write(str(src), x, rate, format=fmt, subtype=subtype)
    out = tmp_path / f"out.{ext}"
    run_cli("enhance", str(src), str(out), "--target", server.target, "--key", api_key, "--chunk-ms", "37")
    info = sf.info(str(out))
    assert (info.format, info.subtype, info.samplerate, info.channels, info.frames) == (
        fmt, subtype, rate, channels, x.shape[0])
    y, _ = sf.read(str(out), dtype="float32", always_2d=True)
    assert energy_db(y[rate // 2 :]) < energy_db(x[rate // 2 :]) - 10.0  # white noise clearly removed


def test_enhance_denoises_an_evaluation_clip(server: ServerProcess, api_key: str, tmp_path: Path) -> None:
    noisy_path, clean_path = eval_pair("pink_p05")
    out = tmp_path / "out.wav"
    run_cli("enhance", str(noisy_path), str(out), "--target", server.target, "--key", api_key)
    noisy, _ = sf.read(str(noisy_path), dtype="float32")
    clean, _ = sf.read(str(clean_path), dtype="float32")
    y, _ = sf.read(str(out), dtype="float32")
    assert y.shape == noisy.shape
    assert energy_db(y - clean) < energy_db(noisy - clean) - 3.0


def test_enhance_errors_are_one_line(server: ServerProcess, tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    white_noise_file(src, seconds=0.2)
    bad = run_cli("enhance", str(src), str(tmp_path / "o.wav"), "--target", server.target, "--key", "nope",
                  check=False)
    assert bad.returncode == 2 and "API_KEY_NOT_FOUND" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "text.wav").write_text("not audio")
    bad = run_cli("enhance", str(tmp_path / "text.wav"), str(tmp_path / "o.wav"), "--target", server.target,
                  "--key", "k", check=False)
    assert bad.returncode == 2 and "cannot read audio file" in bad.stderr


def test_denoise_locally_with_and_without_alignment(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    x = white_noise_file(src, seconds=1.0, rate=16000)
    run_cli("denoise", str(src), str(tmp_path / "a.wav"))
    run_cli("denoise", str(src), str(tmp_path / "b.wav"), "--no-align")
    a, _ = sf.read(str(tmp_path / "a.wav"), dtype="float32")
    b, _ = sf.read(str(tmp_path / "b.wav"), dtype="float32")
    delay = Denoiser(16000).latency_samples
    assert a.shape[0] == x.shape[0] and b.shape[0] == x.shape[0] + delay
    np.testing.assert_array_equal(a, b[delay:])
    assert energy_db(a[8000:]) < energy_db(x[8000:]) - 10.0


def test_serve_refuses_bad_settings_cleanly(tmp_path: Path) -> None:
    bad = run_cli("serve", "--port", "notaport", "--data-dir", str(tmp_path), check=False)
    assert bad.returncode == 2 and "--port" in bad.stderr and "Traceback" not in bad.stderr


def test_jobs_commands(server: ServerProcess, api_key: str, tmp_path: Path) -> None:
    import json

    a = tmp_path / "a.wav"
    b = tmp_path / "b.flac"
    white_noise_file(a, seconds=1.0)
    sf.write(str(b), np.zeros((8000, 2), np.float32), 16000, format="FLAC")
    out = run_cli("jobs", "submit", str(a), str(b), "--wait", "--out", str(tmp_path / "res"),
                  "--target", server.target, "--key", api_key)
    lines = [line.split("\t") for line in out.stdout.strip().splitlines()]
    ids = [x[1] for x in lines[:2]]
    assert [x[0] for x in lines] == [str(a), str(b), str(a), str(b)]
    assert sf.info(lines[2][1]).frames == 16000 and sf.info(lines[3][1]).channels == 2
    got = json.loads(run_cli("jobs", "get", ids[0], "--target", server.target, "--key", api_key).stdout)
    assert got["job_status"] == "completed" and got["job_id"] == ids[0] and got["file_name"] == "a.wav"
    assert set(got) >= {"model", "app_id", "billed_time", "timestamp", "mod_time", "uid", "file_key", "progress"}
    listed = [json.loads(x)["job_id"] for x in
              run_cli("jobs", "list", "--target", server.target, "--key", api_key).stdout.splitlines()]
    assert ids[0] in listed and ids[1] in listed
    dl = run_cli("jobs", "download", ids[1], "--out", str(tmp_path / "x.flac"), "--target", server.target,
                 "--key", api_key)
    assert sf.info(dl.stdout.strip()).format == "FLAC"
    bad = run_cli("jobs", "get", "nope", "--target", server.target, "--key", api_key, check=False)
    assert bad.returncode == 2 and "JOB_NOT_FOUND" in bad.stderr


def test_job_ids_never_read_as_options() -> None:
    """An id starting with '-' made ``hushwire jobs download -MjP...`` an unknown option (1 id in 64)."""
    from server.jobs import new_job_id

    ids = [new_job_id() for _ in range(5000)]
    assert all(len(i) == 22 and i[0].isalnum() for i in ids)
    assert len(set(ids)) == len(ids)
