"""The light client install (``hushwire-client``, clients/python/): built from this tree, installed into
a fresh venv with no registry, streaming and running a job through a real ``hushwire serve``, with
none of the server's dependencies present. And: the client library, in the full install, loads
nothing from the server.

The client's dependency wheels come from a wheelhouse folder: ``$HUSHWIRE_WHEELHOUSE``, else
``.wheelhouse/`` in the repository. ``.ci/run`` fills it with ``pip download`` before the tests, so
the test itself needs no registry. When the folder does not exist (a first local run of the
README's test command), the test fills it the same way, which needs PyPI once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT, ServerProcess, create_key, start_server

from client.jobs import JobsClient
from client.stream import EnhancerClient
from hushwire.contract.job_status import COMPLETED, STATUS_NAMES

CLIENT_PROJECT = ROOT / "clients" / "python"
# What the light install must not carry: the server's and the gateway's dependencies, and their code.
ABSENT = ("fastapi", "uvicorn", "scipy", "prometheus_client", "starlette", "server", "gateway", "cli")
PIP_TIMEOUT_S = 600


def wheelhouse() -> Path:
    return Path(os.environ.get("HUSHWIRE_WHEELHOUSE") or ROOT / ".wheelhouse")


def _pip(python: Path | str, *args: str) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both distributions' wheels, built from the tree (no build isolation: no registry)."""
    out = tmp_path_factory.mktemp("wheels")
    for project in (ROOT, CLIENT_PROJECT):
        _pip(sys.executable, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(project))
    return out


@pytest.fixture(scope="module")
def light_python(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the client wheel and its dependencies, installed with --no-index."""
    house = wheelhouse()
    if not house.is_dir():  # a first local run: fill it once (needs PyPI); .ci/run does this up front
        _pip(sys.executable, "download", "--only-binary=:all:", "--dest", str(house), str(CLIENT_PROJECT))
    venv = tmp_path_factory.mktemp("light") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)  # pip from ensurepip
    python = venv / "bin" / "python"
    client_wheel = next(wheels.glob("hushwire_client-*.whl"))
    _pip(python, "install", "--no-index", "--find-links", str(wheels), "--find-links", str(house), str(client_wheel))
    return python


@pytest.fixture(scope="module")
def dist_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("data"), "--workers", "1")
    yield srv
    assert srv.stop() == 0, srv.log


LIGHT_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    import numpy as np, soundfile as sf
    from client import EnhancerClient, JobsClient
    from hushwire.contract.job_status import STATUS_NAMES

    target, key, wav, out, job_dir = sys.argv[1:6]
    x, rate = sf.read(wav, dtype="float32", always_2d=True)
    with EnhancerClient(target, key) as c:
        y = c.enhance(x, rate, chunk_ms=20.0)
    np.save(out, y)
    with JobsClient(target, key) as jobs:
        job = jobs.submit(wav)
        done = jobs.wait(job.job_id, timeout=120)
        _, result = jobs.download(job.job_id, job_dir)
    from client.mic import MicError, list_devices
    try:
        mic = "listed: " + list_devices()
    except MicError as exc:   # no sounddevice without the `mic` extra: a clear error, not a traceback
        mic = str(exc)
    print(json.dumps({
        "mic": mic,
        "status": STATUS_NAMES[done.status], "result": str(result),
        "absent": {m: importlib.util.find_spec(m) is None for m in sys.argv[6:]},
        "client_file": sys.modules["client"].__file__,
    }))
""")


@pytest.mark.slow
def test_the_light_client_install_streams_and_runs_jobs_without_the_server(
        wheels: Path, light_python: Path, dist_server: ServerProcess, tmp_path: Path) -> None:
    # The two wheels: the full one carries every package and the command, the light one neither.
    full = zipfile.ZipFile(next(wheels.glob("hushwire-*.whl")))
    light = zipfile.ZipFile(next(wheels.glob("hushwire_client-*.whl")))
    full_tops = {n.split("/")[0] for n in full.namelist()}
    light_tops = {n.split("/")[0] for n in light.namelist() if not n.split("/")[0].endswith(".dist-info")}
    assert {"server", "gateway", "client", "cli", "hushwire"} <= full_tops
    assert light_tops == {"client", "hushwire"}
    assert "hushwire/contract/pcm.py" in light.namelist() and "hushwire/v1/enhancer_pb2.py" in light.namelist()
    assert not any(n.endswith("entry_points.txt") for n in light.namelist())   # no `hushwire` command
    entry_points = next(n for n in full.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "hushwire = cli.main:main" in full.read(entry_points).decode()

    key = create_key(dist_server.data_dir, "--name", "light")
    rng = np.random.default_rng(7)
    t = np.arange(32000) / 16000
    x = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    wav = tmp_path / "noisy.wav"
    sf.write(wav, x, 16000, subtype="FLOAT")
    job_dir = tmp_path / "results"
    job_dir.mkdir()

    # -I: no PYTHONPATH, no user site, not the current directory: only what the venv installed.
    proc = subprocess.run(
        [str(light_python), "-I", "-c", LIGHT_SCRIPT, dist_server.target, key, str(wav), str(tmp_path / "y.npy"),
         str(job_dir), *ABSENT],
        capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["absent"] == dict.fromkeys(ABSENT, True), report
    assert "hushwire-client[mic]" in report["mic"], report
    assert Path(report["client_file"]).is_relative_to(light_python.parent.parent), report

    # The same audio through the full install's client gives the same samples; the job completed.
    with EnhancerClient(dist_server.target, key) as c:
        expected = c.enhance(x[:, None], 16000, chunk_ms=20.0)
    streamed = np.load(tmp_path / "y.npy")
    assert streamed.shape == (x.size, 1)
    assert float(np.max(np.abs(streamed - expected))) < 1e-6
    assert report["status"] == COMPLETED
    result, rate = sf.read(report["result"], dtype="float32", always_2d=True)
    assert rate == 16000 and result.shape == (x.size, 1)
    with JobsClient(dist_server.target, key) as jobs:
        assert {STATUS_NAMES[j.status] for j in jobs.list()} == {COMPLETED}


def test_the_client_library_loads_nothing_from_the_server() -> None:
    """Every module of ``client/``, imported in the full install, leaves no server, gateway or CLI
    module in ``sys.modules``."""
    code = textwrap.dedent("""
        import importlib, json, pkgutil, sys
        import client
        names = [m.name for m in pkgutil.walk_packages(client.__path__, "client.")]
        for name in names:
            importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("server", "gateway", "cli"))
        print(json.dumps({"imported": names, "leaked": leaked}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert {"client.errors", "client.files", "client.jobs", "client.mic", "client.stream"} <= set(report["imported"])
    assert report["leaked"] == [], f"importing client/ loaded {report['leaked']}"
