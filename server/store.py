"""Persistent state: users, API keys, jobs and usage in SQLite.

All SQL of the project lives in this module, behind a few methods, so another engine can
replace SQLite without touching the servicers (DESIGN.md, "Growing past one machine").

Keys are random 192-bit tokens. The store keeps HMAC-SHA256(pepper, key) only: the pepper lives
outside the database (a file in the data dir, or configuration shared by replicas), so a leaked
database alone does not let anyone test guesses. The raw key is never stored or logged. The lookup
goes through the hash index; the final comparison is constant-time. Rows from schema 1-2 (plain
SHA-256) still work and are re-hashed with the pepper on first use.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "COMPLETED", "FAILED", "IN_FLIGHT", "KEY_PREFIX", "PENDING", "POST_PROCESSING", "PRE_PROCESSING", "PROCESSING",
    "JobRow", "KeyRecord", "Principal", "Store", "StoreError",
]

KEY_PREFIX = "hw_"

_SCHEMA = [
    # version 1: users and keys
    """
    CREATE TABLE users (
        uid INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE api_keys (
        key_id INTEGER PRIMARY KEY AUTOINCREMENT,
        uid INTEGER NOT NULL REFERENCES users(uid),
        key_hash BLOB NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    """,
    # version 2: jobs and per-key usage
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        uid INTEGER NOT NULL,
        key_id INTEGER NOT NULL,
        status TEXT NOT NULL,
        progress REAL NOT NULL DEFAULT 0,
        held INTEGER NOT NULL DEFAULT 0,
        file_name TEXT NOT NULL,
        file_key TEXT NOT NULL,
        attenuation_limit_db REAL,
        created_at REAL NOT NULL,
        mod_time REAL NOT NULL,
        format TEXT NOT NULL,
        subtype TEXT NOT NULL,
        sample_rate INTEGER NOT NULL,
        channels INTEGER NOT NULL,
        frames INTEGER NOT NULL,
        upload_bytes INTEGER NOT NULL,
        upload_blob TEXT NOT NULL,
        result_blob TEXT,
        result_format TEXT,
        error_code TEXT,
        error_msg TEXT,
        lease_owner TEXT,
        lease_expires REAL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_by_user ON jobs (uid, created_at);
    CREATE INDEX jobs_by_status ON jobs (status, held, created_at);
    CREATE TABLE usage (
        key_id INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        day TEXT NOT NULL,
        billed_seconds REAL NOT NULL DEFAULT 0,
        upload_bytes INTEGER NOT NULL DEFAULT 0,
        jobs INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (key_id, day)
    );
    """,
    # version 3: keys hashed with a pepper (HMAC); older rows say 'sha256' until first use
    """
    ALTER TABLE api_keys ADD COLUMN scheme TEXT NOT NULL DEFAULT 'sha256';
    """,
]

# Job states, as the REST contract spells them.
PENDING, PRE_PROCESSING, PROCESSING, POST_PROCESSING = "pending", "pre-processing", "processing", "post-processing"
COMPLETED, FAILED = "completed", "failed"
IN_FLIGHT = (PRE_PROCESSING, PROCESSING, POST_PROCESSING)


class StoreError(Exception):
    """A store operation that cannot be done (unknown user, unknown key id)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user and the key they used."""

    uid: int
    key_id: int
    name: str


@dataclass(frozen=True)
class KeyRecord:
    key_id: int
    uid: int
    name: str
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class JobRow:
    job_id: str
    uid: int
    key_id: int
    status: str
    progress: float
    held: bool
    file_name: str
    file_key: str
    attenuation_limit_db: float | None
    created_at: float
    mod_time: float
    format: str
    subtype: str
    sample_rate: int
    channels: int
    frames: int
    upload_bytes: int
    upload_blob: str
    result_blob: str | None = None
    result_format: str | None = None
    error_code: str | None = None
    error_msg: str | None = None
    lease_owner: str | None = None
    lease_expires: float | None = None
    attempts: int = 0

    @property
    def billed_seconds(self) -> float:
        return self.frames / self.sample_rate * self.channels if self.sample_rate else 0.0


_JOB_COLUMNS = ", ".join(JobRow.__dataclass_fields__)


def _day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def _add_usage(db: sqlite3.Connection, key_id: int, uid: int, now: float, *, billed_seconds: float = 0.0,
               upload_bytes: int = 0, jobs: int = 0) -> None:
    db.execute(
        "INSERT INTO usage (key_id, uid, day, billed_seconds, upload_bytes, jobs) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (key_id, day) DO UPDATE SET billed_seconds = billed_seconds + excluded.billed_seconds, "
        "upload_bytes = upload_bytes + excluded.upload_bytes, jobs = jobs + excluded.jobs",
        (key_id, uid, _day(now), billed_seconds, upload_bytes, jobs))


def _sha256_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class Store:
    """SQLite-backed store. Safe to share between threads; other processes may open the same file."""

    def __init__(self, path: str | Path, key_pepper: bytes | None = None) -> None:
        """``key_pepper`` is needed only to create or check keys (job workers open the store without it)."""
        self._pepper = key_pepper
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = self._db.execute("SELECT version FROM schema_version").fetchone()
                version = row[0] if row else 0
                for i, script in enumerate(_SCHEMA[version:], start=version + 1):
                    for stmt in script.split(";"):
                        if stmt.strip():
                            self._db.execute(stmt)
                    if row:
                        self._db.execute("UPDATE schema_version SET version = ?", (i,))
                    else:
                        self._db.execute("INSERT INTO schema_version VALUES (?)", (i,))
                        row = (i,)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- users and keys -------------------------------------------------------------------

    def _hash_key(self, key: str) -> bytes:
        if not self._pepper:
            raise StoreError("this store was opened without the key pepper")
        return hmac.new(self._pepper, key.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def create_user(self, name: str) -> int:
        with self._lock:
            cur = self._db.execute("INSERT INTO users (name, created_at) VALUES (?, ?)", (name, time.time()))
            assert cur.lastrowid is not None
            return cur.lastrowid

    def user_name(self, uid: int) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT name FROM users WHERE uid = ?", (uid,)).fetchone()
        return row[0] if row else None

    def create_key(self, uid: int) -> tuple[int, str]:
        """Add a new key to user ``uid``; returns ``(key_id, key)``. The key is shown once."""
        key = KEY_PREFIX + secrets.token_urlsafe(24)
        with self._lock:
            if self._db.execute("SELECT 1 FROM users WHERE uid = ?", (uid,)).fetchone() is None:
                raise StoreError(f"no user with uid {uid}")
            cur = self._db.execute(
                "INSERT INTO api_keys (uid, key_hash, created_at, scheme) VALUES (?, ?, ?, 'hmac')",
                (uid, self._hash_key(key), time.time()),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid, key

    def list_keys(self) -> list[KeyRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT k.key_id, k.uid, u.name, k.created_at, k.revoked_at "
                "FROM api_keys k JOIN users u ON u.uid = k.uid ORDER BY k.key_id"
            ).fetchall()
        return [KeyRecord(*r) for r in rows]

    def revoke_key(self, key_id: int) -> None:
        with self._lock:
            cur = self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
            if cur.rowcount == 0:
                exists = self._db.execute("SELECT 1 FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
                if exists is None:
                    raise StoreError(f"no key with id {key_id}")

    def authenticate(self, key: str) -> Principal | None:
        """The principal for a valid, unrevoked key, else None."""
        if not key or len(key) > 256:
            return None
        digest = self._hash_key(key)
        query = ("SELECT k.key_id, k.uid, u.name, k.key_hash FROM api_keys k JOIN users u ON u.uid = k.uid "
                 "WHERE k.key_hash = ? AND k.scheme = ? AND k.revoked_at IS NULL")
        with self._lock:
            row = self._db.execute(query, (digest, "hmac")).fetchone()
            if row is None:  # a key created before peppering: check, then upgrade it in place
                legacy = _sha256_key(key)
                row = self._db.execute(query, (legacy, "sha256")).fetchone()
                if row is not None and hmac.compare_digest(row[3], legacy):
                    self._db.execute("UPDATE api_keys SET key_hash = ?, scheme = 'hmac' WHERE key_id = ?",
                                     (digest, row[0]))
                    row = (*row[:3], digest)
        if row is None or not hmac.compare_digest(row[3], digest):
            return None
        return Principal(uid=row[1], key_id=row[0], name=row[2])

    # -- jobs ---------------------------------------------------------------------------------

    def _tx(self) -> _Transaction:
        return _Transaction(self)

    def create_job(self, job: JobRow) -> None:
        values = [getattr(job, f) for f in JobRow.__dataclass_fields__]
        with self._lock:
            self._db.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * len(values))})", values)

    def get_job(self, job_id: str) -> JobRow | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return JobRow(*row) if row else None

    def list_jobs(self, uid: int, limit: int, before: tuple[float, str] | None = None) -> list[JobRow]:
        """The user's jobs, newest first; ``before`` is the (created_at, job_id) of the previous page's last."""
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE uid = ?"
        args: list[object] = [uid]
        if before is not None:
            sql += " AND (created_at < ? OR (created_at = ? AND job_id < ?))"
            args += [before[0], before[0], before[1]]
        sql += " ORDER BY created_at DESC, job_id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            return [JobRow(*r) for r in self._db.execute(sql, args).fetchall()]

    def count_queued(self, uid: int) -> int:
        """Jobs of the user that are not finished yet (for the queued-jobs limit)."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE uid = ? AND status NOT IN (?, ?)", (uid, COMPLETED, FAILED)
            ).fetchone()
        return int(row[0])

    def start_job(self, job_id: str, attenuation_limit_db: float | None, set_options: bool) -> bool:
        with self._lock:
            if set_options:
                cur = self._db.execute(
                    "UPDATE jobs SET held = 0, attenuation_limit_db = ? WHERE job_id = ?",
                    (attenuation_limit_db, job_id))
            else:
                cur = self._db.execute("UPDATE jobs SET held = 0 WHERE job_id = ?", (job_id,))
            return cur.rowcount == 1

    def delete_job(self, job_id: str) -> JobRow | None:
        """Remove the job's row; returns it (its blobs are the caller's to delete)."""
        with self._tx() as db:
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
        return JobRow(*row)

    def claim_next(self, owner: str, lease_seconds: float, max_attempts: int) -> JobRow | None:
        """Lease the oldest runnable job: pending and not held, or in flight with an expired lease.
        A job that already used ``max_attempts`` leases fails instead (a poison file must not loop)."""
        now = time.time()
        with self._tx() as db:
            while True:
                row = db.execute(
                    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE held = 0 AND (status = ? OR "
                    f"(status IN (?, ?, ?) AND lease_expires < ?)) ORDER BY created_at LIMIT 1",
                    (PENDING, *IN_FLIGHT, now),
                ).fetchone()
                if row is None:
                    return None
                job = JobRow(*row)
                if job.attempts >= max_attempts:
                    db.execute(
                        "UPDATE jobs SET status = ?, error_code = 'INTERNAL', error_msg = ?, mod_time = ?, "
                        "lease_owner = NULL, lease_expires = NULL WHERE job_id = ?",
                        (FAILED, f"processing stopped {job.attempts} times; giving up", now, job.job_id))
                    continue
                db.execute(
                    "UPDATE jobs SET status = ?, progress = 0, lease_owner = ?, lease_expires = ?, "
                    "attempts = attempts + 1, mod_time = ? WHERE job_id = ?",
                    (PRE_PROCESSING, owner, now + lease_seconds, now, job.job_id))
                return JobRow(**{**job.__dict__, "status": PRE_PROCESSING, "lease_owner": owner,
                                 "lease_expires": now + lease_seconds, "attempts": job.attempts + 1})

    def update_job(self, job_id: str, owner: str, lease_seconds: float, *, status: str | None = None,
                   progress: float | None = None) -> bool:
        """Renew the lease (and set status/progress). False when the job is gone or leased by another."""
        now = time.time()
        sets: list[str] = ["lease_expires = ?"]
        args: list[object] = [now + lease_seconds]
        if status is not None:
            sets += ["status = ?", "mod_time = ?"]
            args += [status, now]
        if progress is not None:
            sets.append("progress = ?")
            args.append(progress)
        with self._lock:
            cur = self._db.execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE job_id = ? AND lease_owner = ?", [*args, job_id, owner])
            return cur.rowcount == 1

    def finish_job(self, job_id: str, owner: str, *, result_blob: str | None = None,
                   result_format: str | None = None, error: tuple[str, str] | None = None) -> bool:
        """Mark the job completed (recording usage) or failed. False when the lease was lost."""
        now = time.time()
        with self._tx() as db:
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ? AND lease_owner = ?",
                             (job_id, owner)).fetchone()
            if row is None:
                return False
            job = JobRow(*row)
            if error is None:
                db.execute(
                    "UPDATE jobs SET status = ?, progress = 1, result_blob = ?, result_format = ?, mod_time = ?, "
                    "lease_owner = NULL, lease_expires = NULL WHERE job_id = ?",
                    (COMPLETED, result_blob, result_format, now, job_id))
                _add_usage(db, job.key_id, job.uid, now, billed_seconds=job.billed_seconds, jobs=1)
            else:
                db.execute(
                    "UPDATE jobs SET status = ?, error_code = ?, error_msg = ?, mod_time = ?, lease_owner = NULL, "
                    "lease_expires = NULL WHERE job_id = ?", (FAILED, error[0], error[1], now, job_id))
            return True

    def requeue(self, owner: str | None = None) -> int:
        """Put in-flight jobs back to pending: those of ``owner``, or all (embedded store at start-up)."""
        now = time.time()
        sql = "UPDATE jobs SET status = ?, progress = 0, lease_owner = NULL, lease_expires = NULL, mod_time = ? " \
              "WHERE status IN (?, ?, ?)"
        args: list[object] = [PENDING, now, *IN_FLIGHT]
        if owner is not None:
            sql += " AND lease_owner = ?"
            args.append(owner)
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def job_stats(self) -> tuple[dict[str, int], int, float | None]:
        """Jobs per state; runnable pending jobs (not held); the creation time of the oldest of those."""
        with self._lock:
            counts = dict(self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
            queued, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(created_at) FROM jobs WHERE status = ? AND held = 0", (PENDING,)).fetchone()
        return counts, int(queued), oldest

    def uploaded_today(self, uid: int) -> int:
        """Bytes the user's accepted uploads took today (UTC), over all their keys."""
        with self._lock:
            row = self._db.execute("SELECT COALESCE(SUM(upload_bytes), 0) FROM usage WHERE uid = ? AND day = ?",
                                   (uid, _day(time.time()))).fetchone()
        return int(row[0])

    def record_upload(self, key_id: int, uid: int, nbytes: int) -> None:
        with self._lock:
            _add_usage(self._db, key_id, uid, time.time(), upload_bytes=nbytes)

    def record_stream(self, key_id: int, uid: int, billed_seconds: float) -> None:
        """Usage of a finished live stream (seconds of audio x channels)."""
        with self._lock:
            _add_usage(self._db, key_id, uid, time.time(), billed_seconds=billed_seconds)

    def usage(self, key_id: int) -> list[tuple[str, float, int, int]]:
        """Per-day (day, billed_seconds, upload_bytes, jobs) of one key."""
        with self._lock:
            return [tuple(r) for r in self._db.execute(
                "SELECT day, billed_seconds, upload_bytes, jobs FROM usage WHERE key_id = ? ORDER BY day",
                (key_id,)).fetchall()]


class _Transaction:
    """``with store._tx() as db``: one IMMEDIATE transaction under the store's lock."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        self._store._lock.acquire()
        self._store._db.execute("BEGIN IMMEDIATE")
        return self._store._db

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            self._store._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._store._lock.release()
