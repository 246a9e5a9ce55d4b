"""A throwaway PostgreSQL cluster for the tests, and the ``database_url`` fixtures built on it.

``postgres`` (session) runs Debian's PostgreSQL (``apt-get install postgresql``; .ci/run installs
it) as a fresh cluster in a temp dir on a free loopback port, with fsync off, and stops it at the
end of the session. initdb refuses to run as root, so as root it runs as the ``postgres`` user.
Without PostgreSQL installed, tests that need it skip and say why.

``database_url`` (per test) and ``module_database_url`` (per module, for module-scoped servers)
are parametrised over :data:`DATABASES`: each instance is a fresh, empty database, a SQLite file
or a new PostgreSQL database. Test ids carry the param (``test_x[sqlite]``, ``test_x[postgresql]``),
so ``-k postgresql`` picks the PostgreSQL half, and another parametrised store fixture (blobs)
combines with these as a cross product.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["DATABASES", "PostgresCluster", "database_url", "find_pg_bin", "fresh_database_url", "module_database_url",
           "postgres"]

DATABASES = ["sqlite", "postgresql"]
START_TIMEOUT_S = 60


def find_pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl (Debian's layout)."""
    dirs = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")]
    dirs = [d for d in dirs if (d / "initdb").exists() and (d / "pg_ctl").exists()]
    dirs.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    return dirs[-1] if dirs else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One running cluster: ``url(db)`` for a database in it, ``create_database()`` for a fresh one."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self._as_postgres = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="hushwire-pg-"))
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.data = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self.port = 0
        self._names = itertools.count(1)
        self._admin: Any = None

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def start(self) -> None:
        """Create the cluster (first time) and start it; after :meth:`halt`, on the same port again."""
        if not (self.data / "PG_VERSION").exists():
            init = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                             "-E", "UTF8", "--locale=C")
            if init.returncode != 0:
                raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        # The free port may be taken between the probe and the bind: try another (on a first start).
        for port in [self.port] if self.port else [_free_port() for _ in range(3)]:
            self.port = port
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
            started = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t",
                                str(START_TIMEOUT_S), "-o", options, "start")
            if started.returncode == 0:
                return
        log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
        raise RuntimeError(f"pg_ctl start failed:\n{started.stdout}\n{started.stderr}\n{log}")

    def halt(self) -> None:
        """Shut the server down (clients are disconnected), keeping the cluster for :meth:`start`."""
        stopped = self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        if stopped.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed:\n{stopped.stdout}\n{stopped.stderr}")

    def stop(self) -> None:
        """Stop the server and delete the cluster."""
        if self._admin is not None:
            self._admin.close()
        if self.port:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _admin_connection(self) -> Any:
        import psycopg

        if self._admin is None or self._admin.broken or self._admin.closed:
            self._admin = psycopg.connect(self.url(), autocommit=True)
        return self._admin

    def create_database(self, prefix: str = "hw") -> str:
        """A new, empty database; returns its URL."""
        name = f"{prefix}_{next(self._names)}"
        self._admin_connection().execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database`, closing whatever still uses it."""
        name = url.rsplit("/", 1)[1]
        self._admin_connection().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    bindir = find_pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("the psycopg driver is not installed (pip install -e '.[test]')")
    cluster = PostgresCluster(bindir)
    t0 = time.monotonic()
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    print(f"\nPostgreSQL {bindir.parent.name} on 127.0.0.1:{cluster.port}, started in "
          f"{time.monotonic() - t0:.1f} s")
    yield cluster
    cluster.stop()


def fresh_database_url(request: pytest.FixtureRequest, kind: str, directory: Path) -> str:
    """A new, empty database of ``kind`` (a :data:`DATABASES` name), dropped when ``request``'s fixture
    ends; SQLite files go under ``directory``. For fixtures that pair a database with other stores."""
    if kind == "sqlite":
        return f"sqlite://{directory / 'db' / 'hushwire.db'}"  # not the data dir's default file
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    url = cluster.create_database()
    request.addfinalizer(lambda: cluster.drop_database(url))  # after the test's servers have stopped
    return url


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database for one test: ``sqlite:///...`` or ``postgresql://...``."""
    return fresh_database_url(request, request.param, tmp_path)


@pytest.fixture(scope="module", params=DATABASES)
def module_database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh, empty database shared by one module's tests (for its module-scoped server)."""
    return fresh_database_url(request, request.param, tmp_path_factory.mktemp("database"))
