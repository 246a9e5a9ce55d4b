"""The two databases behind the store, chosen by URL.

================================================  =============================================
``sqlite:///PATH`` (or a plain path)               an embedded SQLite file: WAL, 30 s busy timeout
``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB``    PostgreSQL through psycopg 3 (``hushwire[scale]``);
                                                   ``postgres://`` and libpq's ``?key=value``
                                                   parameters (``sslmode``, ``options``...) work too
================================================  =============================================

An engine runs one statement (:meth:`Engine.execute`) or a block of them as one transaction
(:meth:`Engine.transaction`), and brings the schema up to date (:meth:`Engine.migrate`). The store
writes its SQL once with ``?`` placeholders; the PostgreSQL engine hands psycopg ``%s`` instead.
Engines are not thread-safe: the store serialises its calls with a lock.

Errors::

    StoreError                 an operation that cannot be done (unknown user, bad URL, no driver)
    └── StoreUnavailable       the database cannot be reached (refused, down, network broken)
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from server.store.schema import MIGRATIONS, VERSION, render, statements

__all__ = ["Engine", "StoreError", "StoreUnavailable", "open_engine", "redact"]

SQLITE_BUSY_TIMEOUT_S = 30.0
PG_CONNECT_TIMEOUT_S = 10     # libpq waits forever by default; a black-holed host must fail at start-up
# pg_advisory_xact_lock key that serialises schema migrations of replicas starting together
# ("hushwire" in ASCII, truncated to a signed 64-bit value's range).
_MIGRATION_LOCK_ID = 0x6875736877697265
_PASSWORD = re.compile(r"(://[^/:@]*:)[^/@]*@")


class StoreError(Exception):
    """A store operation that cannot be done (unknown user, unknown key id, unusable URL)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached: refused, shut down, or the connection broke."""


def redact(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for messages and logs)."""
    return _PASSWORD.sub(r"\1***@", url)


class Engine:
    """One database connection in the store's SQL dialect."""

    dialect = ""
    #: appended to a SELECT that a transaction then updates: locks the rows it read
    for_update = ""
    #: the same, but rows another transaction holds are skipped instead of waited for
    skip_locked = ""
    #: how messages name the database (no password)
    description = ""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """Run one statement; returns a DB-API cursor (``fetchone``, ``fetchall``, ``rowcount``)."""
        raise NotImplementedError

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """A block whose statements commit together, or not at all if it raises."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def set_timeout(self, seconds: float) -> None:
        """From now on a statement that waits longer than ``seconds`` for a lock (or, on PostgreSQL,
        runs longer) fails with :class:`StoreUnavailable`, and its transaction rolls back."""
        raise NotImplementedError

    def _lock_schema(self) -> None:
        """Inside the migration transaction: keep other processes from migrating at the same time."""

    def serialize(self, lock_id: int) -> None:
        """Inside a transaction: wait until no other process's transaction holds ``lock_id``, and hold it
        to the end of this one (for a check-then-insert that no row exists yet to lock). SQLite's
        ``BEGIN IMMEDIATE`` already serializes every writing transaction."""

    def _has_version_table(self) -> bool:
        raise NotImplementedError

    def schema_version(self) -> int:
        """The schema's version; 0 for an empty database."""
        if not self._has_version_table():
            return 0
        row = self.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    def migrate(self, upto: int = VERSION) -> int:
        """Create the schema, or apply the migrations it lacks, in one transaction; returns the version.
        Safe to call from several processes at once; on an up-to-date database it only reads the
        version (every job worker opens the store)."""
        version = self.schema_version()
        if version >= upto:
            return version
        with self.transaction():
            self._lock_schema()
            self.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = self.schema_version()  # again, under the lock: another process may have migrated
            for i in range(version, upto):
                for stmt in statements(MIGRATIONS[i]):
                    self.execute(render(stmt, self.dialect))
            if upto > version:
                if version:
                    self.execute("UPDATE schema_version SET version = ?", (upto,))
                else:
                    self.execute("INSERT INTO schema_version (version) VALUES (?)", (upto,))
            return max(version, upto)


class SQLiteEngine(Engine):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"sqlite://{path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=SQLITE_BUSY_TIMEOUT_S,
                                       isolation_level=None)
            self._enable_wal()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the database {self.description}: {exc}") from None
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA synchronous=NORMAL")

    def _enable_wal(self) -> None:
        """Switch to WAL. On a brand-new file that several processes open at once (a server and its
        workers' first start), SQLite can answer "database is locked" here at once, without waiting
        out the busy timeout (seen once in test_store's four-process open): retry, bounded
        by that timeout."""
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.OperationalError as exc:
            raise _busy(exc, self.description) from exc

    def set_timeout(self, seconds: float) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {max(1, round(seconds * 1000))}")

    def _has_version_table(self) -> bool:
        return self.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
                            ).fetchone() is not None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.execute("BEGIN IMMEDIATE")  # the write lock up front: no upgrade deadlock, no lost claim
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        try:
            self.execute("COMMIT")
        except StoreUnavailable:
            self._db.execute("ROLLBACK")  # a COMMIT that could not get its lock leaves the transaction open
            raise

    def close(self) -> None:
        self._db.close()


def _busy(exc: sqlite3.OperationalError, description: str) -> Exception:
    """SQLite's "database is locked" (another connection held the write lock past the busy timeout)
    as :class:`StoreUnavailable`; any other error unchanged."""
    if "locked" in str(exc) or "busy" in str(exc):
        return StoreUnavailable(f"the database {description} is locked by another connection: {exc}")
    return exc


class PostgresEngine(Engine):
    dialect = "postgresql"
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreError("a postgresql:// database URL needs the psycopg driver: "
                             "pip install 'hushwire[scale]'") from None
        self._psycopg = psycopg
        self._url = url
        self.description = redact(url)
        self._in_transaction = False
        self._timeout_ms: int | None = None
        self._conn = self._connect()

    def _unavailable(self, exc: BaseException, doing: str) -> StoreUnavailable:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StoreUnavailable(f"{doing} {self.description}: {first}")

    def _connect(self) -> Any:
        kwargs: dict[str, Any] = {} if "connect_timeout" in self._url else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        try:
            conn = self._psycopg.connect(self._url, autocommit=True, **kwargs)
            if self._timeout_ms is not None:
                self._apply_timeout(conn)
            return conn
        except self._psycopg.Error as exc:
            raise self._unavailable(exc, "cannot connect to the database") from None

    def _apply_timeout(self, conn: Any) -> None:
        # statement_timeout bounds the wait for a table or row lock (LOCK TABLE, a long transaction)
        # as well as a slow statement; the server cancels the statement and the transaction rolls back.
        conn.execute("SELECT set_config('statement_timeout', %s, false)", [f"{self._timeout_ms}ms"])

    def set_timeout(self, seconds: float) -> None:
        self._timeout_ms = max(1, round(seconds * 1000))
        try:
            self._apply_timeout(self._live())
        except self._psycopg.OperationalError as exc:
            raise self._unavailable(exc, "lost the database") from exc

    def _live(self) -> Any:
        """The connection, opened again if the server restarted or the network broke since the last call
        (the call that saw the break failed with :class:`StoreUnavailable`)."""
        if self._conn.closed or self._conn.broken:
            self._conn.close()
            self._conn = self._connect()
        return self._conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        conn = self._conn if self._in_transaction else self._live()
        params = [int(a) if isinstance(a, bool) else a for a in args]  # booleans live in integer columns
        try:
            return conn.execute(sql.replace("?", "%s"), params)
        except self._psycopg.OperationalError as exc:
            raise self._unavailable(exc, "lost the database") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        conn = self._live()
        self._in_transaction = True
        try:
            with conn.transaction():
                yield
        except self._psycopg.OperationalError as exc:
            raise self._unavailable(exc, "lost the database") from exc
        finally:
            self._in_transaction = False

    def _lock_schema(self) -> None:
        self.serialize(_MIGRATION_LOCK_ID)

    def serialize(self, lock_id: int) -> None:
        self.execute("SELECT pg_advisory_xact_lock(?)", (lock_id,))

    def _has_version_table(self) -> bool:
        return self.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0] is True

    def close(self) -> None:
        self._conn.close()


def open_engine(target: str | Path) -> Engine:
    """The engine for a database URL (``sqlite:///PATH``, ``postgresql://...``) or a SQLite file path."""
    if isinstance(target, Path):
        return SQLiteEngine(target)
    if target.startswith(("postgresql://", "postgres://")):
        return PostgresEngine(target)
    if target.startswith("sqlite://"):
        return SQLiteEngine(Path(target[len("sqlite://"):]))  # sqlite:///var/lib/x.db -> /var/lib/x.db
    if "://" in target:
        raise StoreError(f"unsupported database URL {redact(target)!r}: use sqlite:///PATH or "
                         "postgresql://USER@HOST:PORT/DATABASE")
    return SQLiteEngine(Path(target))
