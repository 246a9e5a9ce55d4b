"""What the benchmarks share: child processes (start, pin, clean up), /proc readings, test audio, tables.

Every benchmark starts its own ``hushwire serve`` (and gateway) on loopback with a temporary data
dir, pins processes to cores when asked, and stops everything it started when it ends, on Ctrl-C,
on SIGTERM and when its own time budget runs out (a SIGALRM watchdog).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HUSHWIRE = [sys.executable, "-m", "cli"]
EVAL_NOISY = ROOT / "evalset" / "16k" / "noisy"  # the committed evaluation set (evalset/README.md)
CLK_TCK = os.sysconf("SC_CLK_TCK")
_LISTENING = re.compile(r"listening on (?:http://)?(\S+):(\d+)")
_PR_SET_PDEATHSIG = 1


class BenchTimeout(Exception):
    """The benchmark's own time budget ran out."""


# -- the run itself ------------------------------------------------------------------------------------


def command_line(module: str) -> str:
    """The exact command that reproduces this run, relative to the repo root where possible."""
    exe = sys.executable
    with contextlib.suppress(ValueError):
        rel = os.path.relpath(exe, ROOT)
        if not rel.startswith(".."):
            exe = rel
    return shlex.join([exe, "-m", module, *sys.argv[1:]])


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def print_header(module: str, what: str) -> None:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"# {what}")
    print(f"command: {command_line(module)}")
    print(f"machine: nproc={os.cpu_count()}, CPU {cpu_model()}, Python {platform.python_version()}, "
          f"load average {load} at start")
    sys.stdout.flush()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table (pastes into docs/performance.md as it is)."""
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print()
    for n, row in enumerate(cells):
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    print()
    sys.stdout.flush()


def _fmt(c: object) -> str:
    if isinstance(c, float):
        return f"{c:.3g}" if abs(c) < 100 else f"{c:.0f}"
    return str(c)


def stopped(exc: BaseException) -> int:
    """The exit status of a bench cut short: 3 when its time bound ran out, 130 when interrupted."""
    if isinstance(exc, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    print(f"stopped: {exc}", file=sys.stderr)
    return 3


def install_watchdog(seconds: float) -> None:
    """SIGTERM behaves like Ctrl-C, and the whole run ends with :class:`BenchTimeout` after ``seconds``."""

    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    def on_alarm(_sig: int, _frame: object) -> None:
        raise BenchTimeout(f"the benchmark's time budget of {seconds:.0f} s ran out")

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(seconds)))


def pin_self(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def usable_cpus(server: int, client: int) -> tuple[int | None, int | None]:
    """The cores to pin to, or None where the machine does not have them (then nothing is pinned)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if server in cpus and client in cpus and server != client:
        return server, client
    return None, None


@contextlib.contextmanager
def temp_dir(keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hushwire-bench-"))
    try:
        yield path
    finally:
        if not keep:
            subprocess.run(["rm", "-rf", str(path)], check=False)


# -- child processes --------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = os.environ.copy()
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy"):
        env.pop(var, None)
    env["no_proxy"] = "127.0.0.1,localhost,::1"
    env["PYTHONUNBUFFERED"] = "1"
    # One core means one thread: numpy's BLAS must not spread to the other core.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    # The benchmarks measure one server process (the CPU of its pid) unless they ask for a group of
    # siblings with --processes (bench.processes); `serve` would otherwise start one per core.
    env.setdefault("HUSHWIRE_PROCESSES", "1")
    return env


def _preexec(cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        with contextlib.suppress(OSError, AttributeError):  # die with the benchmark, even on SIGKILL
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return setup


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Children:
    """The processes a benchmark started; ``stop_all`` (also on any exit of the ``with``) ends them."""

    def __init__(self) -> None:
        self._children: list[Child] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def _spawn(self, name: str, argv: Sequence[str], log_path: Path, cpu: int | None,
               env: dict[str, str] | None, cwd: Path = ROOT) -> Child:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                    env=env or child_env(), preexec_fn=_preexec(cpu), start_new_session=True)
        child = Child(name, proc, log_path)
        self._children.append(child)
        return child

    def start_ready(self, name: str, argv: Sequence[str], log_path: Path, ready: Callable[[], bool],
                    env: dict[str, str] | None = None, ready_timeout: float = 30.0) -> Child:
        """Start ``argv`` (output to ``log_path``) and wait until ``ready()`` (for programs that do not
        log ``listening on``, such as HAProxy)."""
        child = self._spawn(name, argv, log_path, None, env)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if ready():
                return child
            if child.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not become ready:\n{child.log()[-3000:]}")

    def start(self, name: str, argv: Sequence[str], log_path: Path, cpu: int | None = None,
              ready_timeout: float = 60.0, env: dict[str, str] | None = None, cwd: Path = ROOT) -> Child:
        """Start ``argv`` (stderr to ``log_path``) and wait for its ``listening on HOST:PORT`` line."""
        child = self._spawn(name, argv, log_path, cpu, env, cwd)
        proc = child.proc
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            m = _LISTENING.search(child.log())
            if m:
                child.port = int(m.group(2))
                return child
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not report 'listening on':\n{child.log()[-3000:]}")

    def stop(self, child: Child, timeout: float = 20.0) -> None:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        if child in self._children:
            self._children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self._children)):
            self.stop(child)


def start_hushwire(children: Children, data_dir: Path, *extra: str, cpu: int | None = None,
                   workers: int = 1, tree: Path = ROOT) -> Child:
    """``hushwire serve`` of this tree, or of another checkout ``tree`` (see :func:`baseline_tree`)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [*HUSHWIRE, "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir),
            "--workers", str(workers), *extra]
    return children.start("hushwire serve", argv, data_dir / "server.log", cpu, env=tree_env(tree), cwd=tree)


def start_gateway(children: Children, log_dir: Path, grpc_target: str, *extra: str, cpu: int | None = None) -> Child:
    argv = [*HUSHWIRE, "gateway", "--host", "127.0.0.1", "--port", "0", "--grpc-target", grpc_target, *extra]
    return children.start("hushwire gateway", argv, log_dir / "gateway.log", cpu)


def create_key(data_dir: Path, tree: Path = ROOT) -> str:
    """``hushwire keys create`` (of ``tree``) prints the key alone on stdout's last line."""
    proc = subprocess.run([*HUSHWIRE, "keys", "create", "--data-dir", str(data_dir), "--name", "bench"],
                          capture_output=True, text=True, cwd=tree, env=tree_env(tree), timeout=60, check=True)
    return proc.stdout.strip().splitlines()[-1]


def tree_env(tree: Path) -> dict[str, str]:
    """:func:`child_env` for a process of the checkout ``tree``: its own packages come first on the
    path (this tree's are installed in the venv in editable mode)."""
    env = child_env()
    if tree != ROOT:
        env["PYTHONPATH"] = os.pathsep.join([str(tree / "protos"), str(tree)])
    return env


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def baseline_tree(ref: str, tmp: Path) -> Iterator[tuple[Path, str]]:
    """The commit ``ref`` names, checked out in a temporary git worktree under ``tmp`` and removed
    afterwards: ``(its root, its short id)``. Start its server with ``start_hushwire(..., tree=root)``."""
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    tree = tmp / "baseline-tree"
    git("worktree", "add", "--detach", str(tree), commit)
    try:
        yield tree, commit[:9]
    finally:
        git("worktree", "remove", "--force", str(tree))


def free_port() -> int:
    """A TCP port free on loopback right now (for a child's --metrics-port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- /proc ----------------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    """Resident set size (VmRSS) of one process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sched_seconds(pid: int) -> tuple[float, float]:
    """Seconds one process's threads have run, and waited runnable for a CPU (Linux schedstat; zeros
    elsewhere). Over a window, run / (run + wait) is the share of the CPU it asked for that it got: well
    under 1, other work held its core."""
    run = wait = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = (task / "schedstat").read_text().split()
                run += int(fields[0])
                wait += int(fields[1])
    return run / 1e9, wait / 1e9


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


def worker_pids(server_pid: int) -> list[int]:
    """The server's job worker processes (multiprocessing spawn children)."""
    pids = []
    for pid in child_pids(server_pid):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
    return pids


# -- audio ------------------------------------------------------------------------------------------------


def test_audio(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Noisy speech from the committed evaluation set (looped), or synthetic voiced bursts in noise without it.

    The denoiser's cost barely depends on the signal, but real speech keeps its branches honest.
    """
    n = int(seconds * rate)
    files = sorted(EVAL_NOISY.glob("*.flac"))
    if files:
        import soundfile as sf

        parts, total = [], 0
        for path in files:
            x, sr = sf.read(str(path), dtype="float32", always_2d=True)
            if sr != 16000:
                continue
            parts.append(x[:, 0])
            total += x.shape[0]
            if total * rate >= n * 16000:
                break
        x16 = np.concatenate(parts)
        x16 = np.tile(x16, -(-n * 16000 // (rate * x16.shape[0])) or 1)
        if rate != 16000:
            from scipy.signal import resample_poly

            g = np.gcd(rate, 16000)
            x16 = resample_poly(x16, rate // g, 16000 // g).astype(np.float32)
        return np.ascontiguousarray(x16[:n], dtype=np.float32)
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    voiced = (np.sin(2 * np.pi * 2.0 * t) > 0).astype(np.float32)
    tone = sum(np.sin(2 * np.pi * 140.0 * k * t) / k for k in range(1, 10))
    return (0.1 * voiced * tone + 0.02 * rng.standard_normal(n)).astype(np.float32)


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else float("nan")


# -- profiles ---------------------------------------------------------------------------------------------


def _stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    """(frames, sample count) per line of a py-spy ``--format raw`` (collapsed) file."""
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if stack and count_s.isdigit():
            yield stack.split(";"), int(count_s)


def summarize_collapsed(path: Path, top: int = 15) -> list[tuple[str, float, float]]:
    """Self and inclusive share of samples per function from a py-spy ``--format raw`` (collapsed) file."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for stack, count in _stacks(path):
        total += count
        frames = [f for f in stack if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        names = [_frame_name(f) for f in frames]
        own[names[-1]] = own.get(names[-1], 0) + count
        for name in set(names):
            incl[name] = incl.get(name, 0) + count
    rows = sorted(own, key=lambda k: -own[k])[:top]
    return [(name, 100.0 * own[name] / total, 100.0 * incl[name] / total) for name in rows] if total else []


def summarize_lines(path: Path, prefix: str = "server/", top: int = 16) -> list[tuple[str, float]]:
    """Inclusive share of samples per source line of the project's own files (``prefix``)."""
    incl: dict[str, int] = {}
    total = 0
    for stack, count in _stacks(path):
        total += count
        seen = set()
        for frame in stack:
            m = re.match(r"(.*) \((.*?):(\d+)\)$", frame)
            if not m:
                continue
            func, file, lineno = m.groups()
            rel = os.path.relpath(file, ROOT) if file.startswith(str(ROOT)) else file
            if rel.startswith(prefix):
                key = f"{rel}:{lineno} ({func})"
                if key not in seen:
                    seen.add(key)
                    incl[key] = incl.get(key, 0) + count
    # Entry points (the CLI, asyncio.run) hold nearly every sample and say nothing.
    rows = sorted((k for k in incl if incl[k] < 0.9 * total), key=lambda k: -incl[k])[:top]
    return [(k, 100.0 * incl[k] / total) for k in rows] if total else []


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; keep the function and the file.
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, file = m.groups()
    file = re.sub(r".*/site-packages/", "", file)
    file = re.sub(r".*/lib/python3\.\d+/", "", file)
    with contextlib.suppress(ValueError):
        file = os.path.relpath(file, ROOT) if file.startswith(str(ROOT)) else file
    return f"{func} ({file})"


def py_spy_record(pid: int, out: Path, seconds: float, rate: int = 250, native: bool = False,
                  gil: bool = True) -> subprocess.Popen[bytes]:
    """Start ``py-spy record`` on ``pid`` (collapsed stacks into ``out``); the caller waits for it.

    With ``gil`` only the thread holding the GIL is sampled: the Python (and Cython) work, without
    threads that merely wait in poll/epoll and look busy to py-spy when the core is contended.
    """
    spy = Path(sys.executable).with_name("py-spy")
    argv = [str(spy if spy.exists() else "py-spy"), "record", "--pid", str(pid), "--duration", str(int(seconds)),
            "--rate", str(rate), "--format", "raw", "--output", str(out)]
    # --nonblocking reads the target without pausing it (less distortion) but cannot unwind C frames.
    argv.append("--native" if native else "--nonblocking")
    if gil:
        argv.append("--gil")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def print_profile(path: Path, title: str, top: int = 15) -> None:
    rows = summarize_collapsed(path, top) if path.exists() else []
    if not rows:
        print(f"(no profile samples in {path})")
        return
    print(f"{title} (py-spy samples; self = on top of the stack, incl. = anywhere in it)")
    print_table(["function (file)", "self %", "incl. %"], [(n, round(s, 1), round(i, 1)) for n, s, i in rows])
    lines = summarize_lines(path)
    if lines:
        print(f"{title}: hottest lines of server/ (inclusive)")
        print_table(["line (function)", "incl. %"], [(k, round(v, 1)) for k, v in lines])
