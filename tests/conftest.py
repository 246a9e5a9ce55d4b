"""Shared fixtures: a real ``hushwire serve`` subprocess on a free loopback port with a temp data dir."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pg_fixtures import database_url, module_database_url, postgres  # noqa: F401  (PostgreSQL fixtures)
from s3_fixtures import s3_blob_url, s3_server  # noqa: F401  (a real S3-compatible server: tests/s3_fixtures.py)

ROOT = Path(__file__).resolve().parent.parent
EVALSET = ROOT / "evalset"  # the committed evaluation set (evalset/README.md)
HUSHWIRE = [sys.executable, "-m", "cli"]
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 60,
            ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*HUSHWIRE, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"hushwire {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def create_key(data_dir: Path, *extra: str) -> str:
    return run_cli("keys", "create", "--data-dir", str(data_dir), *extra).stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def localhost_twice(tmp_path: Path, second: str = "::1") -> dict[str, str]:
    """An environment in which ``localhost`` names 127.0.0.1 and ``second`` (in that order), whatever
    this machine's /etc/hosts says: nss_wrapper (Debian's libnss-wrapper, installed by .ci/run) makes
    the processes started with it resolve names from a hosts file of their own."""
    import glob

    found = sorted(glob.glob("/usr/lib/*/libnss_wrapper.so") + glob.glob("/usr/lib/libnss_wrapper.so"))
    if not found:
        pytest.skip("libnss-wrapper is not installed (apt-get install libnss-wrapper)")
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{second} localhost\n")
    return {**os.environ, "LD_PRELOAD": found[0], "NSS_WRAPPER_HOSTS": str(hosts)}


@contextlib.contextmanager
def sqlite_write_lock(path: Path | str) -> Iterator[None]:
    """Hold the SQLite file's write lock from another connection inside the block (reads go on: WAL)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()


def stop_process(proc: subprocess.Popen[bytes], what: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Signal ``proc`` and return its exit status; kill it (and fail) if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{what} did not exit within {timeout} s of signal {sig}") from None


def start_logged(args: list[str], log_path: Path, what: str, timeout: float = 30,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], re.Match[str]]:
    """Start a hushwire command with stderr in ``log_path`` (a pipe nobody reads could block it) and
    wait for its ``listening on HOST:PORT`` line."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*HUSHWIRE, *args], stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = _LISTENING.search(log_path.read_text(errors="replace"))
        if m:
            return proc, m
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError(f"{what} did not report 'listening on':\n" + log_path.read_text(errors="replace"))


@dataclass
class ServerProcess:
    data_dir: Path
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        return stop_process(self.proc, "server", sig, timeout)


def start_server(data_dir: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 30,
                 ) -> ServerProcess:
    """Start ``hushwire serve --port 0`` with a temp data dir."""
    log_path = data_dir / f"server-{time.monotonic_ns()}.log"
    args = ["serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir), *extra]
    proc, m = start_logged(args, log_path, "server", timeout, env)
    return ServerProcess(data_dir, proc, int(m.group(2)), log_path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("data")
    srv = start_server(data_dir)
    yield srv
    assert srv.stop() == 0, srv.log


@pytest.fixture(scope="module")
def api_key(server: ServerProcess) -> str:
    return create_key(server.data_dir, "--name", "tester")


def eval_pair(name: str, rate: str = "16k") -> tuple[Path, Path]:
    """A (noisy, clean) FLAC pair of the committed evaluation set, e.g. ``eval_pair("white_p05")``."""
    noisy = EVALSET / rate / "noisy" / f"{name}.flac"
    assert noisy.is_file(), f"{noisy} is missing: the evaluation set is committed with the repository"
    return noisy, EVALSET / rate / "clean" / noisy.name


def white_noise_file(path: Path, seconds: float = 2.0, rate: int = 16000, channels: int = 1,
                     level_db: float = -30.0, subtype: str = "PCM_16", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((int(seconds * rate), channels)) * 10 ** (level_db / 20)).astype(np.float32)
    sf.write(str(path), x, rate, subtype=subtype)
    return x


def scrape_metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A server's Prometheus metrics: (sample name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def energy_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


# gRPC honours http(s)_proxy; loopback tests (and the servers they start) must never use one.
for _var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy"):
    os.environ.pop(_var, None)
os.environ["no_proxy"] = "127.0.0.1,localhost,::1"
# Admission control (server/admission.py) scales its budget by the CPU the server gets: on a loaded CI
# machine it rightly turns away streams that tests about other things open by the dozen. Servers the
# tests start run without it unless they ask (tests/test_admission.py and test_replicas.py pass
# --live-cpu-budget, which wins over the environment).
os.environ.setdefault("HUSHWIRE_LIVE_CPU_BUDGET", "0")
# `serve` runs one process per core by default (server/group.py); the tests of everything else start one
# server process, as they were written for, and tests/test_processes.py starts groups with --processes.
os.environ.setdefault("HUSHWIRE_PROCESSES", "1")

from replica_fixtures import cluster, store_urls  # noqa: E402, F401  (two replicas behind HAProxy: test_replicas.py)

# -- skips in CI ---------------------------------------------------------------------------------------
# A skipped test tests nothing, and a missing system package (PostgreSQL, HAProxy, Chromium, JACK)
# used to make whole groups vanish silently. With HUSHWIRE_NO_SKIPS=1 (.ci/run sets it) any skip not
# listed here fails the run, named in the summary. Keep the list short, each entry with its reason.
ALLOWED_SKIPS: dict[str, str] = {
    "tests/dsp/test_model.py::test_matches_torch": "torch is a training-only dependency, not in the test extra",
    "tests/dsp/test_model.py::test_deep_filter_matches_torch[0]": "the same, for the deep-filter model",
    "tests/dsp/test_model.py::test_deep_filter_matches_torch[16]": "the same, with a low-rank filter head",
    "tests/dsp/test_model.py::test_periodicity_model_matches_torch": "the same, for a model with periodicity features",
}
NO_SKIPS_ENV = "HUSHWIRE_NO_SKIPS"
_unexpected_skips: list[tuple[str, str]] = []


def _note_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and report.nodeid not in ALLOWED_SKIPS:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _unexpected_skips.append((report.nodeid, reason))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _note_skip(report)   # a module skipped whole (importorskip at import time)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _note_skip(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get(NO_SKIPS_ENV) == "1" and _unexpected_skips and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if os.environ.get(NO_SKIPS_ENV) == "1" and _unexpected_skips:
        terminalreporter.section(f"skips not allowed in CI ({NO_SKIPS_ENV}=1; allowed: tests/conftest.py "
                                 "ALLOWED_SKIPS)", red=True)
        for nodeid, reason in _unexpected_skips:
            terminalreporter.line(f"{nodeid}: {reason}")
