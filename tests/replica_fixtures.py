"""Real replicas behind a real balancer: two ``hushwire serve`` sharing one store and one blob store,
HAProxy 2.6 in front of them (``deploy/haproxy/grpc.cfg``), and on demand two gateways behind a
second HAProxy (``deploy/haproxy/gateway.cfg``). Everything binds loopback ports in temp dirs and is
stopped in reverse order.

The HAProxy configs are the files in ``deploy/`` with only their addresses swapped (see
:func:`render_haproxy`), so the tests prove the shipped configs work.

The stores come from the ``store_urls`` fixture, parametrised over SQLite (WAL mode) with a local
blob folder shared on this machine, and a real PostgreSQL with a real S3-compatible server (the
fixtures of tests/pg_fixtures.py and tests/s3_fixtures.py); nothing else here knows which it is.

Each replica has its own data dir: what they share comes from configuration only (the database and
blob URLs, and the signing secret and key pepper in the environment), as on separate machines.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT, free_port, run_cli, start_logged, stop_process
from pg_fixtures import fresh_database_url
from s3_fixtures import fresh_blob_url

__all__ = ["DEPLOY_TLS_DIR", "STORES", "Cluster", "Gateways", "HAProxy", "Replica", "StoreURLs", "cluster",
           "render_haproxy", "start_gateways", "store_urls"]

DEPLOY = ROOT / "deploy" / "haproxy"
HAPROXY = shutil.which("haproxy") or (Path("/usr/sbin/haproxy") if Path("/usr/sbin/haproxy").exists() else None)
# Short leases, so a SIGKILLed replica's job is picked up within seconds (default 30 s).
LEASE_SECONDS = 2.0


@dataclass(frozen=True)
class StoreURLs:
    """Where the replicas keep jobs/keys/usage and blobs: the ``--database-url`` and ``--blob-url``."""

    database_url: str
    blob_url: str
    kind: str = "sqlite+file"


# Every replica test runs on both: SQLite (WAL) and a blob folder shared on one machine, and a real
# PostgreSQL and a real S3-compatible server (tests/pg_fixtures.py, tests/s3_fixtures.py).
STORES = ["sqlite+file", "postgresql+s3"]


@pytest.fixture(scope="module", params=STORES)
def store_urls(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> StoreURLs:
    """One fresh database and one fresh blob store shared by every replica of the module."""
    database, blobs = request.param.split("+")
    directory = tmp_path_factory.mktemp("shared-store")
    return StoreURLs(fresh_database_url(request, database, directory), fresh_blob_url(request, blobs, directory),
                     request.param)


# -- HAProxy ---------------------------------------------------------------------------------------------


# Where the deploy/ configs with TLS keep their certificates; the tests swap in a folder of their own.
DEPLOY_TLS_DIR = "/etc/hushwire/tls/"


def _deploy_lines(src: Path, tls_dir: Path | None) -> list[str]:
    text = src.read_text()
    if tls_dir is not None:
        text = text.replace(DEPLOY_TLS_DIR, f"{tls_dir}/")
    return text.splitlines()


def render_haproxy(src: Path, bind_port: int, servers: list[tuple[str, int, int | None]], stats_socket: Path,
                   tls_dir: Path | None = None) -> str:
    """``src`` with loopback addresses: the ``bind`` address, in each backend one ``server`` line per
    ``(name, port, check port)`` built from that backend's first ``server`` line's options, and the
    stats socket; with ``tls_dir``, the certificates are read from there instead of ``/etc/hushwire/tls/``."""
    out: list[str] = []
    template: list[str] | None = None
    seen_backend = False
    for line in _deploy_lines(src, tls_dir):
        words = line.split()
        indent = line[: len(line) - len(line.lstrip())]
        if words[:1] == ["backend"]:
            template = None   # each backend's first server line is its own template
            seen_backend = True
            out.append(line)
        elif words[:1] == ["bind"]:
            out.append(f"{indent}bind 127.0.0.1:{bind_port} {' '.join(words[2:])}".rstrip())
        elif words[:2] == ["stats", "socket"]:
            out.append(f"{indent}stats socket {stats_socket} {' '.join(words[3:])}".rstrip())
        elif words[:1] == ["server"]:
            if template is None:
                template = words[3:]
                for name, port, check_port in servers:
                    opts = list(template)
                    if "port" in opts and check_port is not None:
                        opts[opts.index("port") + 1] = str(check_port)
                    out.append(f"{indent}server {name} 127.0.0.1:{port} {' '.join(opts)}")
        else:
            out.append(line)
    if template is None or not seen_backend:
        raise ValueError(f"{src} has no server line")
    return "\n".join(out) + "\n"


@dataclass
class HAProxy:
    proc: subprocess.Popen[bytes]
    port: int
    stats_socket: Path
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def command(self, cmd: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.stats_socket))
            s.sendall(cmd.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def server_status(self, backend: str | None = None) -> dict[str, str]:
        """``{server name: "UP" | "DOWN" | "MAINT" | ...}`` from ``show stat``: in ``backend``, or by
        default in the first backend that has the server (the one for every call)."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        status = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("svname") in (None, "", "FRONTEND", "BACKEND"):
                continue
            if backend is not None and row.get("pxname") != backend:
                continue
            status.setdefault(row["svname"], row["status"].split()[0])  # "UP 1/2" while rising
        return status

    def wait_status(self, name: str, status: str, timeout: float = 15.0, backend: str | None = None) -> float:
        """Wait until HAProxy sees ``name`` as ``status``; returns the seconds it took."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.server_status(backend).get(name)
            if seen == status:
                return time.monotonic() - t0
            time.sleep(0.1)
        raise AssertionError(f"HAProxy never saw {name} {status} within {timeout} s (last: {seen})\n{self.log[-2000:]}")

    def stop(self) -> None:
        stop_process(self.proc, "haproxy", signal.SIGTERM, timeout=10)


def start_haproxy(src: Path, work: Path, servers: list[tuple[str, int, int | None]], name: str,
                  port: int | None = None, tls_dir: Path | None = None) -> HAProxy:
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy)")
    port = port or free_port()
    sock = work / f"{name}.sock"
    cfg = work / f"{name}.cfg"
    cfg.write_text(render_haproxy(src, port, servers, sock, tls_dir))
    log_path = work / f"{name}.log"
    with open(log_path, "wb") as log:
        # -db: stay in the foreground, no daemon (the test owns the process).
        proc = subprocess.Popen([str(HAPROXY), "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    lb = HAProxy(proc, port, sock, log_path)
    deadline = time.monotonic() + 15
    while not sock.exists() or not _port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise AssertionError(f"haproxy did not start:\n{lb.log}")
        time.sleep(0.05)
    return lb


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- replicas ---------------------------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    data_dir: Path
    port: int
    health_port: int
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_paths: list[Path] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def readyz(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/readyz"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log(self) -> str:
        """Every run's log (a restarted replica keeps its earlier ones)."""
        return "".join(p.read_text(errors="replace") for p in self.log_paths)

    def events(self, name: str) -> list[dict[str, object]]:
        """The JSON log events called ``name`` (replicas log with ``--log-format json``)."""
        out = []
        for line in self.log.splitlines():
            if f'"{name}"' in line:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("event") == name:
                    out.append(rec)
        return out

    def start(self) -> None:
        log_path = self.data_dir / f"server-{len(self.log_paths)}.log"
        self.log_paths.append(log_path)
        self.proc, _ = start_logged(self.args, log_path, f"replica {self.name}", timeout=60, env=self.env)

    def kill(self) -> None:
        """SIGKILL: no drain, no requeue; its worker processes die with it (PDEATHSIG)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        assert self.proc is not None
        return stop_process(self.proc, f"replica {self.name}", sig, timeout)

    def ready_status(self) -> int:
        """The health mirror's answer to ``GET /readyz``."""
        try:
            with urllib.request.urlopen(self.readyz, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as err:
            return int(err.code)


@dataclass
class Cluster:
    """Two replicas (``a``, ``b``) behind ``lb`` (HAProxy), sharing ``stores`` and one API ``key``."""

    stores: StoreURLs
    work: Path
    env: dict[str, str]
    replicas: list[Replica]
    lb: HAProxy | None = None
    key: str = ""
    extra: list[Replica] = field(default_factory=list)

    @property
    def a(self) -> Replica:
        return self.replicas[0]

    @property
    def b(self) -> Replica:
        return self.replicas[1]

    def replica(self, name: str, *extra_args: str, workers: int = 1) -> Replica:
        """A replica definition (not started) on fresh loopback ports with its own data dir."""
        data_dir = self.work / name
        data_dir.mkdir(exist_ok=True)
        port, health_port = free_port(), free_port()
        args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--health-http-port", str(health_port),
                "--data-dir", str(data_dir), "--database-url", self.stores.database_url,
                "--blob-url", self.stores.blob_url, "--workers", str(workers), "--lease-seconds", str(LEASE_SECONDS),
                "--log-format", "json", *extra_args]
        return Replica(name, data_dir, port, health_port, args, self.env)

    def start_extra(self, name: str, *extra_args: str, workers: int = 1) -> Replica:
        """One more replica on the same stores, not behind the balancer (stopped with the cluster)."""
        rep = self.replica(name, *extra_args, workers=workers)
        self.extra.append(rep)
        rep.start()
        return rep

    def restart(self, rep: Replica) -> None:
        """Start a stopped or killed replica again on its ports, and wait until HAProxy uses it."""
        assert not rep.alive
        rep.start()
        if self.lb is not None and rep in self.replicas:
            self.lb.wait_status(rep.name, "UP", timeout=30)

    def serving(self, stream_events_before: dict[str, int]) -> list[Replica]:
        """The replicas that opened a stream since the counts in ``stream_events_before``."""
        return [r for r in self.replicas if len(r.events("stream opened")) > stream_events_before.get(r.name, 0)]

    def stream_counts(self) -> dict[str, int]:
        return {r.name: len(r.events("stream opened")) for r in self.replicas}

    def stop(self) -> None:
        """Reverse order: the balancer, then the replicas (extra ones first)."""
        errors = []
        if self.lb is not None:
            self.lb.stop()
        for rep in [*reversed(self.extra), *reversed(self.replicas)]:
            if rep.alive:
                code = rep.stop()
                if code != 0:
                    errors.append(f"replica {rep.name} exited {code}:\n{rep.log[-3000:]}")
        assert not errors, "\n".join(errors)


def shared_env() -> dict[str, str]:
    """What the replicas share through configuration: the signing secret and the key pepper."""
    env = dict(os.environ)
    env["HUSHWIRE_SIGNING_SECRET"] = secrets.token_urlsafe(32)
    env["HUSHWIRE_KEY_PEPPER"] = secrets.token_urlsafe(32)
    return env


def start_cluster(work: Path, stores: StoreURLs, *replica_args: str, haproxy_cfg: Path = DEPLOY / "grpc.cfg",
                  tls_dir: Path | None = None) -> Cluster:
    c = Cluster(stores, work, shared_env(), [])
    try:
        c.replicas = [c.replica("a", *replica_args), c.replica("b", *replica_args)]
        for rep in c.replicas:
            rep.start()
        c.key = run_cli("keys", "create", "--name", "replicas", "--data-dir", str(work / "a"), "--database-url",
                        stores.database_url, "--blob-url", stores.blob_url, env=c.env).stdout.strip().splitlines()[-1]
        c.lb = start_haproxy(haproxy_cfg, work, [(r.name, r.port, r.health_port) for r in c.replicas],
                             "haproxy-grpc", tls_dir=tls_dir)
        for rep in c.replicas:
            c.lb.wait_status(rep.name, "UP")
    except BaseException:
        c.stop()
        raise
    return c


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, store_urls: StoreURLs) -> Iterator[Cluster]:
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy)")
    c = start_cluster(tmp_path_factory.mktemp("cluster"), store_urls, "--drain-seconds", "30")
    yield c
    c.stop()


# -- gateways behind their own HAProxy ------------------------------------------------------------------


@dataclass
class Gateways:
    procs: list[subprocess.Popen[bytes]]
    ports: list[int]
    lb: HAProxy

    @property
    def url(self) -> str:
        return self.lb.url

    def stop(self) -> None:
        self.lb.stop()
        for proc in reversed(self.procs):
            assert stop_process(proc, "gateway", signal.SIGTERM, 20) == 0


_GW_LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


def start_gateways(c: Cluster, n: int = 2) -> Gateways:
    """``n`` gateways forwarding to the cluster's gRPC balancer, behind the gateway balancer. The
    public URL (the prefix of result URLs) is the gateway balancer's address, known before it starts."""
    assert c.lb is not None
    lb_port = free_port()
    public = f"http://127.0.0.1:{lb_port}"
    procs, ports = [], []
    try:
        for i in range(n):
            port = free_port()
            proc, _ = start_logged(["gateway", "--host", "127.0.0.1", "--port", str(port), "--grpc-target",
                                    c.lb.target, "--public-url", public], c.work / f"gateway{i}.log", "gateway",
                                   env=c.env)
            procs.append(proc)
            ports.append(port)
        lb = start_haproxy(DEPLOY / "gateway.cfg", c.work, [(f"gateway{i}", p, None) for i, p in enumerate(ports)],
                           "haproxy-gateway", port=lb_port)
        for i in range(n):
            lb.wait_status(f"gateway{i}", "UP")
    except BaseException:
        for proc in procs:
            stop_process(proc, "gateway")
        raise
    return Gateways(procs, ports, lb)



# -- nginx (the alternative gRPC balancer) ------------------------------------------------------------------

NGINX = shutil.which("nginx") or (Path("/usr/sbin/nginx") if Path("/usr/sbin/nginx").exists() else None)


def render_nginx(src: Path, listen_port: int, servers: list[int], pid_path: Path, tls_dir: Path | None = None) -> str:
    """``deploy/nginx/grpc.conf`` with loopback addresses: the ``listen`` address, one upstream
    ``server`` line per port (the file's first one's options), and the pid file; ``tls_dir`` as in
    :func:`render_haproxy`."""
    out: list[str] = []
    template: list[str] | None = None
    for line in _deploy_lines(src, tls_dir):
        words = line.split()
        indent = line[: len(line) - len(line.lstrip())]
        if words[:1] == ["listen"]:
            out.append(f"{indent}listen 127.0.0.1:{listen_port} {' '.join(words[2:])}")
        elif words[:1] == ["pid"]:
            out.append(f"{indent}pid {pid_path};")
        elif words[:1] == ["server"] and len(words) > 1 and ":" in words[1]:
            if template is None:
                template = words[2:]
                out += [f"{indent}server 127.0.0.1:{port} {' '.join(template)}" for port in servers]
        else:
            out.append(line)
    return "\n".join(out) + "\n"


@dataclass
class Nginx:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc, "nginx", signal.SIGQUIT, timeout=10)  # SIGQUIT: graceful


def start_nginx(c: Cluster, src: Path = ROOT / "deploy" / "nginx" / "grpc.conf", tls_dir: Path | None = None) -> Nginx:
    if NGINX is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    port = free_port()
    cfg = c.work / "nginx-grpc.conf"
    cfg.write_text(render_nginx(src, port, [r.port for r in c.replicas], c.work / "nginx.pid", tls_dir))
    log_path = c.work / "nginx.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(NGINX), "-c", str(cfg), "-g", "daemon off;"], stdout=log,
                                stderr=subprocess.STDOUT)
    lb = Nginx(proc, port, log_path)
    deadline = time.monotonic() + 15
    while not _port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise AssertionError(f"nginx did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    return lb
