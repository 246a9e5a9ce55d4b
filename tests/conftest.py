"""Shared fixtures: a real ``hushwire serve`` subprocess on a free loopback port with a temp data dir."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT.parent / "shared" / "eval-data" / "dev"
HUSHWIRE = [sys.executable, "-m", "server.cli"]
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 60,
            ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*HUSHWIRE, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"hushwire {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def create_key(data_dir: Path, *extra: str) -> str:
    return run_cli("keys", "create", "--data-dir", str(data_dir), *extra).stdout.strip().splitlines()[-1]


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
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server did not exit within {timeout} s of signal {sig}") from None


def start_server(data_dir: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 30,
                 ) -> ServerProcess:
    """Start ``hushwire serve --port 0``; its stderr goes to a file (a pipe nobody reads could block it)."""
    log_path = data_dir / f"server-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*HUSHWIRE, "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir), *extra],
            stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT, env=env,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = _LISTENING.search(log_path.read_text(errors="replace"))
        if m:
            return ServerProcess(data_dir, proc, int(m.group(2)), log_path)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError("server did not report 'listening on':\n" + log_path.read_text(errors="replace"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("data")
    srv = start_server(data_dir)
    yield srv
    assert srv.stop() == 0, srv.log


@pytest.fixture(scope="module")
def api_key(server: ServerProcess) -> str:
    return create_key(server.data_dir, "--name", "tester")


def dev_pair(name: str | None = None) -> tuple[Path, Path]:
    """A (noisy, clean) pair from the shared dev corpus."""
    noisy = sorted((DEV / "noisy").glob("*.wav"))
    path = next(p for p in noisy if name is None or name in p.name)
    return path, DEV / "clean" / path.name


def white_noise_file(path: Path, seconds: float = 2.0, rate: int = 16000, channels: int = 1,
                     level_db: float = -30.0, subtype: str = "PCM_16", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((int(seconds * rate), channels)) * 10 ** (level_db / 20)).astype(np.float32)
    sf.write(str(path), x, rate, subtype=subtype)
    return x


def energy_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


# gRPC honours http(s)_proxy; loopback tests (and the servers they start) must never use one.
for _var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy"):
    os.environ.pop(_var, None)
os.environ["no_proxy"] = "127.0.0.1,localhost,::1"
