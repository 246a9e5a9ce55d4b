"""``hushwire eval`` as a user runs it: the real command on the committed evaluation set."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import EVALSET, ROOT, run_cli

from cli.evaluate import estimate_delay, si_sdr

DELAY_5MS = (f"{sys.executable} -c \"import sys, numpy as np, soundfile as sf; x, sr = sf.read(sys.argv[1]); "
             "sf.write(sys.argv[2], np.concatenate([np.zeros(sr // 200), x]), sr)\" {in} {out}")


def test_eval_scores_hushwire_and_a_command_on_the_8k_set(tmp_path: Path) -> None:
    out_json, out_md = tmp_path / "eval.json", tmp_path / "eval.md"
    done = run_cli("eval", "--noisy", str(EVALSET / "8k" / "noisy"), "--clean", str(EVALSET / "8k" / "clean"),
                   "--json", str(out_json), "--markdown", str(out_md), "--cmd", "cp {in} {out}", timeout=300)
    result = json.loads(out_json.read_text())
    o = result["overall"]
    assert {"pesq", "pesq_delta", "estoi", "estoi_delta", "si_sdr_delta", "delay_ms"} <= set(o)
    assert result["pairs"] == o["n"] == 8 and len(result["files"]) == 8
    # hushwire: the delay it reports (10 ms), measured; and a real improvement (measured ΔPESQ +0.506)
    assert o["delay_ms"] == o["delay_ms_min"] == o["delay_ms_max"] == 10.0
    assert o["pesq_delta"] > 0.3 and o["estoi_delta"] > 0.03 and o["si_sdr_delta"] > 3.0, o
    assert set(result["groups"]["noise_type"]) == {"white", "pink", "hum", "fan", "car", "keyboard", "music",
                                                   "babble"}
    # the copy is the noisy input itself: no delay, every delta 0 (to float rounding: numpy's sums
    # may differ in the last bit between two arrays of equal values at different alignments)
    cp = result["cmd"]
    assert cp["command"] == "cp {in} {out}" and cp["overall"]["delay_ms"] == 0.0
    for f in cp["files"]:
        assert max(abs(f["pesq_delta"]), abs(f["estoi_delta"]), abs(f["si_sdr_delta"])) < 1e-9, f
    # the Markdown report: on stdout and in the file, one overall row per system
    assert done.stdout == out_md.read_text()
    assert "| hushwire | overall | 8 |" in done.stdout and "| cp {in} {out} | overall | 8 |" in done.stdout


def test_eval_measures_a_commands_delay_and_groups_by_file_name(tmp_path: Path) -> None:
    noisy, clean = tmp_path / "noisy", tmp_path / "clean"
    noisy.mkdir()
    clean.mkdir()
    for src, dst in (("white_p05", "white__a"), ("white_p10", "white__b"), ("car_p05", "car__a")):
        shutil.copy(EVALSET / "16k" / "noisy" / f"{src}.flac", noisy / f"{dst}.flac")
        # another container for the reference: pairs match by stem too
        x, rate = sf.read(str(EVALSET / "16k" / "clean" / f"{src}.flac"), dtype="int16")
        sf.write(str(clean / f"{dst}.wav"), x, rate, subtype="PCM_16")
    out = tmp_path / "eval.json"
    run_cli("eval", "--noisy", str(noisy), "--clean", str(clean), "--json", str(out), "--cmd", DELAY_5MS, timeout=300)
    result = json.loads(out.read_text())
    assert set(result["groups"]["group"]) == {"white", "car"}
    assert result["groups"]["group"]["white"]["n"] == 2
    delayed = result["cmd"]
    assert [f["delay_ms"] for f in delayed["files"]] == [5.0, 5.0, 5.0]
    # aligned again, the delayed copy scores as the input (only its last 5 ms are cut)
    assert abs(delayed["overall"]["pesq_delta"]) < 0.02 and abs(delayed["overall"]["estoi_delta"]) < 0.01


def test_eval_refuses_unusable_input_with_one_line(tmp_path: Path) -> None:
    noisy, clean = tmp_path / "noisy", tmp_path / "clean"
    noisy.mkdir()
    clean.mkdir()
    shutil.copy(EVALSET / "8k" / "noisy" / "hum_p05.flac", noisy / "hum_p05.flac")
    args = ["eval", "--noisy", str(noisy), "--clean", str(clean)]
    missing = run_cli(*args, check=False)
    assert missing.returncode == 2 and "hum_p05.flac: no clean file with that name" in missing.stderr
    assert "Traceback" not in missing.stderr
    shutil.copy(EVALSET / "8k" / "clean" / "hum_p05.flac", clean / "hum_p05.flac")
    failing = run_cli(*args, "--cmd", f"{sys.executable} -c 'import sys; sys.exit(\"no luck\")' {{in}} {{out}}",
                      check=False, timeout=120)
    assert failing.returncode == 2 and "--cmd failed on hum_p05.flac (exit 1): no luck" in failing.stderr
    no_out = run_cli(*args, "--cmd", "cp {in}", check=False)
    assert no_out.returncode == 2 and "{out}" in no_out.stderr
    not_dir = run_cli("eval", "--noisy", str(tmp_path / "nowhere"), "--clean", str(clean), check=False)
    assert not_dir.returncode == 2 and "not a directory" in not_dir.stderr


def test_eval_says_how_to_install_its_extra(tmp_path: Path) -> None:
    # A pesq that cannot be imported, first on the path: what a install without the extra sees.
    fake = tmp_path / "site" / "pesq"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'pesq'\")\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(ROOT)]))
    done = run_cli("eval", "--noisy", str(EVALSET / "8k" / "noisy"), "--clean", str(EVALSET / "8k" / "clean"),
                   env=env, check=False)
    assert done.returncode == 2
    assert "pip install 'hushwire[eval]'" in done.stderr and "Traceback" not in done.stderr


def test_delay_and_si_sdr_helpers() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(16000)
    assert estimate_delay(x, np.concatenate([np.zeros(37), x]), 16000) == 37
    assert estimate_delay(x, x[12:], 16000) == -12
    assert si_sdr(x, 3.0 * x) > 200.0   # scale does not count
    noise = rng.standard_normal(16000)
    assert si_sdr(x, x + 0.1 * noise) == pytest.approx(20.0, abs=0.5)


def test_eval_noise_only_pairs_and_a_manifest_beside_the_folders(tmp_path: Path) -> None:
    # The layout of many corpora: DIR/manifest.csv (an 'id' column), DIR/noisy, DIR/clean.
    (tmp_path / "noisy").mkdir()
    (tmp_path / "clean").mkdir()
    noisy, rate = sf.read(str(EVALSET / "8k" / "noisy" / "fan_p05.flac"), dtype="float64")
    clean, _ = sf.read(str(EVALSET / "8k" / "clean" / "fan_p05.flac"), dtype="float64")
    sf.write(str(tmp_path / "noisy" / "fan.wav"), noisy, rate, subtype="FLOAT")
    sf.write(str(tmp_path / "clean" / "fan.wav"), clean, rate, subtype="FLOAT")
    sf.write(str(tmp_path / "noisy" / "fanonly.wav"), noisy - clean, rate, subtype="FLOAT")
    sf.write(str(tmp_path / "clean" / "fanonly.wav"), np.zeros_like(clean), rate, subtype="FLOAT")
    (tmp_path / "manifest.csv").write_text("id,noise_type,snr_db\nfan,fan,5\nfanonly,fan,-inf\n")
    out = tmp_path / "eval.json"
    run_cli("eval", "--noisy", str(tmp_path / "noisy"), "--clean", str(tmp_path / "clean"), "--json", str(out),
            timeout=120)
    result = json.loads(out.read_text())
    assert result["overall"]["n"] == 1 and result["groups"]["noise_type"]["fan"]["n"] == 1
    # the fan noise alone loses well over 20 dB (the denoiser's floor is 40 dB down)
    assert result["noise_only"]["n"] == 1 and result["noise_only"]["attenuation_db"] > 20.0, result["noise_only"]
