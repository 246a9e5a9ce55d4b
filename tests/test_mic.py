"""``hushwire mic`` against real PortAudio devices: ALSA ``file`` PCMs (capture reads a prepared file,
playback writes one) paced by a JACK server on its dummy driver, so the audio clock is real time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import (
    EVALSET,
    ROOT,
    ServerProcess,
    create_key,
    energy_db,
    free_port,
    run_cli,
    scrape_metrics,
    start_server,
)

from server.dsp import Denoiser

RATE = 48000
JACK_PLUGIN = Path("/usr/lib/x86_64-linux-gnu/alsa-lib/libasound_module_pcm_jack.so")

_ASOUNDRC = """
pcm.jackpcm {{
    type jack
    playback_ports {{ 0 system:playback_1 }}
    capture_ports {{ 0 system:capture_1 }}
}}
pcm.fileout {{
    type file
    slave.pcm "jackpcm"
    file "{out}"
    format "raw"
}}
pcm.filein {{
    type file
    slave.pcm "jackpcm"
    file "/dev/null"
    infile "{inp}"
    format "raw"
}}
"""


@pytest.fixture(scope="module")
def audio_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path, np.ndarray]]:
    """A HOME whose ALSA config has 'filein' (plays an evaluation-set clip as the mic) and 'fileout' devices."""
    if shutil.which("jackd") is None or not JACK_PLUGIN.exists():
        pytest.skip("needs jackd and the ALSA jack plugin (apt-get install jackd2 libasound2-plugins)")
    home = tmp_path_factory.mktemp("home")
    noisy = EVALSET / "48k" / "noisy" / "white_p00.flac"
    x, rate = sf.read(str(noisy), dtype="float32")
    assert rate == RATE
    speech = np.concatenate([x, x, x])
    speech.astype("<f4").tofile(home / "in.raw")
    (home / ".asoundrc").write_text(_ASOUNDRC.format(out=home / "out.raw", inp=home / "in.raw"))
    name = f"hushwire-test-{uuid.uuid4().hex[:8]}"
    jack = subprocess.Popen(["jackd", "-r", "-n", name, "-d", "dummy", "-r", str(RATE), "-p", "480", "-C", "2",
                             "-P", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    env = dict(os.environ, HOME=str(home), JACK_DEFAULT_SERVER=name, JACK_NO_START_SERVER="1")
    try:
        yield env, home, speech
    finally:
        jack.terminate()
        jack.wait(10)


def test_list_devices(audio_home: tuple[dict[str, str], Path, np.ndarray]) -> None:
    env, _, _ = audio_home
    out = run_cli("mic", "--list-devices", env=env).stdout
    assert "filein" in out and "fileout" in out


@pytest.mark.slow
def test_mic_streams_plays_and_records(server: ServerProcess, api_key: str, tmp_path: Path,
                                       audio_home: tuple[dict[str, str], Path, np.ndarray]) -> None:
    env, home, speech = audio_home
    (home / "out.raw").unlink(missing_ok=True)
    rec, raw = tmp_path / "out.wav", tmp_path / "raw.wav"
    proc = run_cli("mic", "--target", server.target, "--key", api_key, "--input-device", "filein",
                   "--output-device", "fileout", "--rate", str(RATE), "--record", str(rec), "--record-raw", str(raw),
                   "--duration", "3", env=env, timeout=60)
    summary = proc.stderr.replace("\r", "\n")
    assert "streamed 3.0 s at 48000 Hz" in summary and "latency p50" in summary and "dropped 0" in summary
    r, _ = sf.read(str(raw), dtype="float32")
    y, _ = sf.read(str(rec), dtype="float32")
    assert r.shape == y.shape and r.shape[0] >= 3 * RATE
    # The capture is the prepared recording (the file device plays it as the microphone) ...
    n = 4800
    start = int(np.argmax(np.abs(np.correlate(r[:RATE], speech[:n], mode="valid"))))
    np.testing.assert_allclose(r[start : start + n], speech[:n], atol=1e-4)
    # ... and the recording is exactly what the denoiser makes of that capture, aligned.
    d = Denoiser(RATE)
    expect = np.concatenate([d.process(r[:, None]), d.flush()])[d.latency_samples :, 0]
    assert np.max(np.abs(y - expect)) < 2e-3
    assert energy_db(y) < energy_db(r)
    # It was also played: the output device received about as much audio as was streamed.
    played = np.fromfile(home / "out.raw", dtype="<f4")
    assert played.shape[0] > 2 * RATE and energy_db(played) > -80


def test_mic_retries_a_full_server_within_the_connect_budget(
        tmp_path: Path, audio_home: tuple[dict[str, str], Path, np.ndarray]) -> None:
    env, _, _ = audio_home
    metrics = free_port()
    srv = start_server(tmp_path, "--max-streams", "0", "--metrics-port", str(metrics), "--workers", "0")
    try:
        t0 = time.monotonic()
        bad = run_cli("mic", "--target", srv.target, "--key", create_key(tmp_path), "--rate", str(RATE),
                      "--input-device", "filein", "--output-device", "fileout", "--connect-timeout", "1.5",
                      env=env, check=False, timeout=60)
        took = time.monotonic() - t0
        refused = scrape_metrics(metrics).get(("hushwire_errors_total", (("code", "OVERLOADED"),)), 0.0)
    finally:
        assert srv.stop() == 0, srv.log
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert "is full (OVERLOADED) and stayed so for --connect-timeout 1.5 s" in bad.stderr, bad.stderr
    assert refused >= 4, refused   # it tried again and again, with the library's jittered backoff
    assert took < 30, took


def test_mic_errors_are_plain(server: ServerProcess, audio_home: tuple[dict[str, str], Path, np.ndarray]) -> None:
    env, _, _ = audio_home
    common = ["--input-device", "filein", "--output-device", "fileout"]
    bad = run_cli("mic", "--target", server.target, "--key", "wrong", "--rate", str(RATE), "--duration", "1",
                  *common, env=env, check=False, timeout=60)
    assert bad.returncode == 2 and "rejected the API key" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli("mic", "--target", "127.0.0.1:1", "--key", "k", "--rate", str(RATE), "--connect-timeout", "1.5",
                  *common, env=env, check=False, timeout=60)
    assert bad.returncode == 2 and "unreachable" in bad.stderr and "retrying" in bad.stderr
    bad = run_cli("mic", "--key", "k", "--rate", "22050", *common, env=env, check=False)
    assert bad.returncode == 2 and "--rate 22050 is not supported" in bad.stderr
    bad = run_cli("mic", "--key", "k", "--input-device", "nosuchdevice", env=env, check=False)
    assert bad.returncode == 2 and "no input device matches 'nosuchdevice'" in bad.stderr


def test_mic_without_devices_says_so(tmp_path: Path) -> None:
    env = dict(os.environ, HOME=str(tmp_path))  # no ALSA config: no devices at all
    bad = run_cli("mic", "--key", "k", env=env, check=False)
    assert bad.returncode == 2 and ("no input device" in bad.stderr or "PortAudio" in bad.stderr)


def test_missing_portaudio_says_how_to_install(tmp_path: Path) -> None:
    # Hide the PortAudio library from sounddevice's loader, as on a machine without libportaudio2.
    code = ("import ctypes.util, sys; ctypes.util.find_library = lambda name: None; "
            "from cli.main import main; sys.exit(main(['mic', '--list-devices']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, HOME=str(tmp_path)), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "PortAudio library was not found" in proc.stderr and "apt-get install libportaudio2" in proc.stderr
    assert "Traceback" not in proc.stderr
