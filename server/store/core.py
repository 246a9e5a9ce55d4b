"""The store: users, API keys, jobs and usage, in SQLite or PostgreSQL (see :mod:`.engines`).

The SQL of the project lives in this package, behind a few methods, so the servicers never see
which database runs (docs/design.md, "Growing past one machine"). The statements are written once for
both; the engine supplies the few words that differ (row locks).

Jobs are claimed with a lease that expires (:meth:`Store.claim_next`): on PostgreSQL the claim
reads with ``FOR UPDATE SKIP LOCKED`` inside its transaction, so replicas claiming at once get
different jobs without waiting on each other; on SQLite the transaction holds the write lock.
Every claim counts an attempt, and a worker's later writes name the attempt they belong to, so
a worker whose lease ran out (and whose job another worker took) can no longer change the job:
a job completes, and is billed, exactly once.

Claims are fair across users (:meth:`Store.claim_next`): fewest jobs running first, then least
recent service, so a user's queue never delays another user's job beyond the jobs already running.

Keys are random 192-bit tokens. The store keeps HMAC-SHA256(pepper, key) only: the pepper lives
outside the database (a file in the data dir, or configuration shared by replicas), so a leaked
database alone does not let anyone test guesses. The raw key is never stored or logged. The lookup
goes through the hash index; the final comparison is constant-time. Rows from schema 1-2 (plain
SHA-256) still work and are re-hashed with the pepper on first use.

Secrets that every process on one database must share (the key pepper, the signing secret) are
checked against fingerprints the database records the first time it sees each
(:meth:`Store.check_secret`): a replica with another secret stops at start-up instead of refusing
the others' keys or URLs. A rotation (the new secret configured with the old one as "previous")
retires the old fingerprint; rows hashed with a previous pepper are re-hashed on their first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hushwire.contract.job_status import COMPLETED, FAILED, PENDING, POST_PROCESSING, PRE_PROCESSING, PROCESSING
from server.store.engines import Engine, StoreError, StoreUnavailable, open_engine
from server.store.webhooks import WebhookStore, enqueue_webhook

__all__ = [
    "COMPLETED", "FAILED", "IN_FLIGHT", "KEY_PREFIX", "PENDING", "POST_PROCESSING", "PRE_PROCESSING", "PROCESSING",
    "IdempotencyConflict", "IdempotencyRecord", "JobRow", "KeyRecord", "Principal", "SecretMismatch", "Store",
    "StoreError", "StoreUnavailable", "TooManyKeys", "secret_fingerprint",
]

KEY_PREFIX = "hw_"

# Job states: the store keeps the REST contract's spelling.
IN_FLIGHT = (PRE_PROCESSING, PROCESSING, POST_PROCESSING)


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
    scheme: str = "hmac"   # "hmac-previous", "sha256": hashed with a retired pepper, or none; re-hashed on use


@dataclass(frozen=True)
class IdempotencyRecord:
    """What an idempotency key holds. ``reply`` None: reserved by a request that still runs (or died:
    the reservation lapses at ``expires_at``)."""

    token: str
    request_sha256: str
    reply: bytes | None
    job_ids: list[str]
    expires_at: float


class SecretMismatch(StoreError):
    """A secret differs from the one the database recorded (one line, naming the secret)."""


SECRET_LABELS = {"key_pepper": "key pepper (HUSHWIRE_KEY_PEPPER)",
                 "signing_secret": "signing secret (HUSHWIRE_SIGNING_SECRET)"}


_SECRETS_LOCK_ID = 0x6877736563726574   # PostgreSQL advisory lock around the secret checks ("hwsecret")


def secret_fingerprint(name: str, secret: bytes) -> str:
    """A fingerprint that names a secret without revealing it: HMAC-SHA256 keyed by the secret."""
    return hmac.new(secret, f"hushwire secret fingerprint: {name}".encode(), hashlib.sha256).hexdigest()


class IdempotencyConflict(StoreError):
    """The key is reserved by another request that still runs, or the reservation was lost."""


class TooManyKeys(StoreError):
    """The user holds the most idempotency keys allowed."""


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
    hold_expires: float | None = None   # while held: unix time after which the job is swept unless renewed
    callback_url: str | None = None     # POSTed the job's status when it finishes (server/webhooks.py)

    @property
    def billed_seconds(self) -> float:
        return self.frames / self.sample_rate * self.channels if self.sample_rate else 0.0


_JOB_COLUMNS = ", ".join(JobRow.__dataclass_fields__)
_CLAIM_CANDIDATES = 8   # users a claim tries, fairest first, before it gives up for this round


def _day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def _add_usage(db: Engine, key_id: int, uid: int, now: float, *, billed_seconds: float = 0.0,
               upload_bytes: int = 0, jobs: int = 0, admitted_seconds: float = 0.0) -> None:
    db.execute(
        "INSERT INTO usage (key_id, uid, day, billed_seconds, upload_bytes, jobs, admitted_seconds) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (key_id, day) DO UPDATE SET billed_seconds = usage.billed_seconds + excluded.billed_seconds, "
        "upload_bytes = usage.upload_bytes + excluded.upload_bytes, jobs = usage.jobs + excluded.jobs, "
        "admitted_seconds = usage.admitted_seconds + excluded.admitted_seconds",
        (key_id, uid, _day(now), billed_seconds, upload_bytes, jobs, admitted_seconds))


def _sha256_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _lease_held(owner: str, attempt: int | None) -> tuple[str, list[object]]:
    """The WHERE clause (and its arguments) of a write that needs the worker's lease."""
    if attempt is None:
        return "lease_owner = ?", [owner]
    return "lease_owner = ? AND attempts = ?", [owner, attempt]


class _Rollback(Exception):
    """Ends a transaction without committing it."""


def _fill_key(db: Engine, uid: int, idempotent: tuple[str, str, str, bytes, float], job_ids: list[str]) -> None:
    key, token, request_sha256, reply, expires_at = idempotent
    cur = db.execute("UPDATE idempotency_keys SET request_sha256 = ?, reply = ?, job_ids = ?, expires_at = ? "
                     "WHERE uid = ? AND idem_key = ? AND token = ? AND reply IS NULL",
                     (request_sha256, reply, " ".join(job_ids), expires_at, uid, key, token))
    if cur.rowcount != 1:
        raise IdempotencyConflict("the key's reservation lapsed and another request took it")


class Store(WebhookStore):
    """Users, keys, jobs and usage in one database (webhooks: :mod:`server.store.webhooks`). Safe to
    share between threads; other processes (job workers, other replicas, ``hushwire keys``) may open
    the same database at the same time.

    ``database`` is a URL (``sqlite:///PATH``, ``postgresql://USER@HOST:PORT/DB``) or a SQLite file
    path. The schema is created, or migrated, on open. Raises :class:`StoreUnavailable` when the
    database cannot be reached and :class:`StoreError` for a URL that cannot be used.
    """

    def __init__(self, database: str | Path, key_pepper: bytes | None = None,
                 previous_key_pepper: bytes | None = None, *, timeout: float | None = None,
                 separate_reads: bool = False) -> None:
        """``key_pepper`` is needed only to create or check keys (job workers open the store without it);
        it is checked against the database's record (:class:`SecretMismatch`). ``previous_key_pepper``
        is the pepper a rotation replaces: keys hashed with it still work, and are re-hashed.

        ``timeout`` bounds, in seconds, how long one operation waits for a lock: the store's own (the
        calls of other threads) and the database's (another connection's write lock on SQLite, a
        table lock or a slow statement on PostgreSQL); past it the operation raises
        :class:`StoreUnavailable` and its transaction rolls back. None: wait as long as the engine's
        default (SQLite's busy timeout, 30 s; PostgreSQL: no limit). The server sets it (``--store-timeout``).

        ``separate_reads``: reads (key lookups, job and usage queries) use a second connection of their
        own, so they never wait behind this store's writes: while another process holds SQLite's write
        lock (or a PostgreSQL row lock) and a write here waits for it, reads still answer. The server
        sets it; a job worker or ``hushwire keys`` needs one connection only."""
        self._pepper = key_pepper
        self._previous_pepper = previous_key_pepper
        self._lock = threading.Lock()
        self._timeout = timeout
        self._database = database
        self._separate_reads = separate_reads
        self._read_lock = threading.Lock()
        self._reader: Engine | None = None   # opened on the first read (with separate_reads)
        self._db = open_engine(database)
        #: ``sqlite`` or ``postgresql``
        self.dialect = self._db.dialect
        #: the SQLite file, or None for a database server
        self.path: Path | None = getattr(self._db, "path", None)
        try:
            with self._locked() as db:
                self.schema_version = db.migrate()
            #: what the pepper check found: "recorded", "matched" or "rotated" (None without a pepper)
            self.pepper_check = (self.check_secret("key_pepper", key_pepper, previous_key_pepper)
                                 if key_pepper else None)
            if timeout is not None:  # after the start-up work, which may wait for another process's
                with self._locked() as db:
                    db.set_timeout(timeout)
        except BaseException:
            self._db.close()
            raise

    @property
    def description(self) -> str:
        """The database's URL, without a password."""
        return self._db.description

    def close(self) -> None:
        with self._lock:  # no timeout: closing waits for the call in progress
            self._db.close()
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Engine]:
        """``with self._locked() as db``: the connection, for this thread alone; waits at most the
        store's timeout for the calls of other threads."""
        if not self._lock.acquire(timeout=-1 if self._timeout is None else self._timeout):
            raise StoreUnavailable(f"the database {self.description} is busy: no turn within {self._timeout:g} s")
        try:
            yield self._db
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Engine]:
        """``with self._reading() as db``: a connection for one or more reads (see ``separate_reads``;
        without it, the one connection). Waits at most the store's timeout for other threads' reads."""
        if not self._separate_reads:
            with self._locked() as db:
                yield db
            return
        if not self._read_lock.acquire(timeout=-1 if self._timeout is None else self._timeout):
            raise StoreUnavailable(f"the database {self.description} is busy: no turn within {self._timeout:g} s")
        try:
            if self._reader is None:
                reader = open_engine(self._database)
                if self._timeout is not None:
                    reader.set_timeout(self._timeout)
                self._reader = reader
            yield self._reader
        finally:
            self._read_lock.release()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Engine]:
        """``with self._tx() as db``: one transaction under the store's lock."""
        with self._locked() as db, db.transaction():
            yield db

    # -- secrets ---------------------------------------------------------------------------

    def check_secret(self, name: str, secret: bytes, previous: bytes | None = None) -> str:
        """Compare ``secret`` with the fingerprint the database recorded for ``name``: "recorded" (the
        first time), "matched", or "rotated" (``previous`` was the recorded one: it is retired now, and
        for the key pepper, the keys it hashed are marked for re-hashing). Raises
        :class:`SecretMismatch`, naming the secret, for anything else, including a retired secret."""
        label = SECRET_LABELS.get(name, name)
        mine = secret_fingerprint(name, secret)
        now = time.time()
        with self._tx() as db:
            # Replicas first started together on a fresh database find no row to lock: without this
            # lock each would record its own secret as 'current' and start, disagreeing silently.
            db.serialize(_SECRETS_LOCK_ID)
            rows = dict(db.execute(f"SELECT fingerprint, status FROM secret_fingerprints WHERE name = ?"
                                   f"{db.for_update}", (name,)).fetchall())
            current = next((fp for fp, status in rows.items() if status == "current"), None)
            if current is None:
                cur = db.execute("INSERT INTO secret_fingerprints (name, fingerprint, status, recorded_at) "
                                 "VALUES (?, ?, 'current', ?) ON CONFLICT (name, fingerprint) DO NOTHING",
                                 (name, mine, now))
                if cur.rowcount == 1:
                    return "recorded"
                current = mine   # another process recorded the same secret at the same moment
            if current == mine:
                return "matched"
            where = f"the database {self.description}"
            if rows.get(mine) == "retired":
                raise SecretMismatch(f"the {label} differs from {where}'s: this one was retired by a rotation "
                                     "(see docs/security.md, \"Rotating secrets\")")
            if previous is not None and secret_fingerprint(name, previous) == current:
                db.execute("UPDATE secret_fingerprints SET status = 'retired' WHERE name = ? AND fingerprint = ?",
                           (name, current))
                db.execute("INSERT INTO secret_fingerprints (name, fingerprint, status, recorded_at) "
                           "VALUES (?, ?, 'current', ?)", (name, mine, now))
                if name == "key_pepper":
                    db.execute("UPDATE api_keys SET scheme = 'hmac-previous' WHERE scheme = 'hmac'")
                return "rotated"
            raise SecretMismatch(f"the {label} differs from the one {where} was first used with (fingerprint "
                                 f"{current[:12]}, this process has {mine[:12]}): every process on one database "
                                 "needs the same one")

    # -- users and keys -------------------------------------------------------------------

    def _hash_key(self, key: str) -> bytes:
        if not self._pepper:
            raise StoreError("this store was opened without the key pepper")
        return hmac.new(self._pepper, key.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def create_user(self, name: str) -> int:
        with self._locked() as db:
            row = db.execute("INSERT INTO users (name, created_at) VALUES (?, ?) RETURNING uid",
                                   (name, time.time())).fetchone()
        return int(row[0])

    def user_name(self, uid: int) -> str | None:
        with self._reading() as db:
            row = db.execute("SELECT name FROM users WHERE uid = ?", (uid,)).fetchone()
        return row[0] if row else None

    def create_key(self, uid: int) -> tuple[int, str]:
        """Add a new key to user ``uid``; returns ``(key_id, key)``. The key is shown once."""
        key = KEY_PREFIX + secrets.token_urlsafe(24)
        digest = self._hash_key(key)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM users WHERE uid = ?", (uid,)).fetchone() is None:
                raise StoreError(f"no user with uid {uid}")
            row = db.execute(
                "INSERT INTO api_keys (uid, key_hash, created_at, scheme) VALUES (?, ?, ?, 'hmac') RETURNING key_id",
                (uid, digest, time.time()),
            ).fetchone()
        return int(row[0]), key

    def list_keys(self) -> list[KeyRecord]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT k.key_id, k.uid, u.name, k.created_at, k.revoked_at, k.scheme "
                "FROM api_keys k JOIN users u ON u.uid = k.uid ORDER BY k.key_id"
            ).fetchall()
        return [KeyRecord(*r) for r in rows]

    def revoke_key(self, key_id: int) -> None:
        with self._locked() as db:
            cur = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
            if cur.rowcount == 0:
                exists = db.execute("SELECT 1 FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
                if exists is None:
                    raise StoreError(f"no key with id {key_id}")

    def authenticate(self, key: str) -> Principal | None:
        """The principal for a valid, unrevoked key, else None."""
        if not key or len(key) > 256:
            return None
        digest = self._hash_key(key)
        query = ("SELECT k.key_id, k.uid, u.name, k.key_hash FROM api_keys k JOIN users u ON u.uid = k.uid "
                 "WHERE k.key_hash = ? AND k.scheme IN (?, ?) AND k.revoked_at IS NULL")
        with self._reading() as db:  # the usual case: a key hashed with the current pepper
            row = db.execute(query, (digest, "hmac", "hmac-previous")).fetchone()
        if row is not None:
            return Principal(uid=row[1], key_id=row[0], name=row[2]) if hmac.compare_digest(bytes(row[3]), digest) \
                else None
        with self._locked() as db:  # an older hash, upgraded in place: a write
            if row is None and self._previous_pepper:  # hashed with the pepper a rotation replaces
                old = hmac.new(self._previous_pepper, key.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
                row = db.execute(query, (old, "hmac", "hmac-previous")).fetchone()
                if row is not None and hmac.compare_digest(bytes(row[3]), old):
                    # Re-hash it only once this pepper is the recorded one (a process still on the old
                    # pepper as its current, mid-rotation, must not hash it back).
                    if db.execute("SELECT 1 FROM secret_fingerprints WHERE name = 'key_pepper' AND "
                                        "fingerprint = ? AND status = 'current'",
                                        (secret_fingerprint("key_pepper", self._pepper or b""),)).fetchone():
                        db.execute("UPDATE api_keys SET key_hash = ?, scheme = 'hmac' WHERE key_id = ?",
                                         (digest, row[0]))
                    row = (*row[:3], digest)
            if row is None:  # a key created before peppering: check, then upgrade it in place
                legacy = _sha256_key(key)
                row = db.execute(query, (legacy, "sha256", "sha256")).fetchone()
                if row is not None and hmac.compare_digest(bytes(row[3]), legacy):
                    db.execute("UPDATE api_keys SET key_hash = ?, scheme = 'hmac' WHERE key_id = ?",
                                     (digest, row[0]))
                    row = (*row[:3], digest)
        if row is None or not hmac.compare_digest(bytes(row[3]), digest):
            return None
        return Principal(uid=row[1], key_id=row[0], name=row[2])

    # -- jobs ---------------------------------------------------------------------------------

    def create_job(self, job: JobRow, idempotent: tuple[str, str, str, bytes, float] | None = None, *,
                   count_upload: bool = False) -> None:
        """Insert the job. With ``idempotent`` = (key, reservation token, request fingerprint, reply,
        expires_at), the reply is stored under the reserved key in the same transaction (raises
        :class:`IdempotencyConflict`, creating nothing, if the reservation was lost). With
        ``count_upload``, the upload's bytes and billed seconds count against its key's daily quotas
        in the same transaction (undone by :meth:`withdraw_job`)."""
        values = [getattr(job, f) for f in JobRow.__dataclass_fields__]
        with self._tx() as db:
            db.execute(f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * len(values))})", values)
            if idempotent is not None:
                _fill_key(db, job.uid, idempotent, [job.job_id])
            if count_upload:
                _add_usage(db, job.key_id, job.uid, job.created_at, upload_bytes=job.upload_bytes,
                           admitted_seconds=job.billed_seconds)

    def withdraw_job(self, job: JobRow) -> bool:
        """Undo ``create_job(job, count_upload=True)`` (its caller gave up): delete the row unless a
        worker has claimed it already, and take its bytes off the usage. False if it was not there or
        claimed (then the job stands: it runs and is billed like any other)."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM jobs WHERE job_id = ? AND lease_owner IS NULL AND status = ?",
                             (job.job_id, PENDING))
            if cur.rowcount != 1:
                return False
            _add_usage(db, job.key_id, job.uid, job.created_at, upload_bytes=-job.upload_bytes,
                       admitted_seconds=-job.billed_seconds)
        return True

    def start_jobs(self, uid: int, job_ids: list[str], attenuation_limit_db: float | None, set_options: bool,
                   idempotent: tuple[str, str, str, bytes, float] | None = None,
                   callback_url: str | None = None) -> list[str]:
        """Start the user's held jobs, all or none: returns the ids that are not held jobs of ``uid`` (and
        then starts nothing). With ``idempotent`` (as for :meth:`create_job`) the reply is stored in the
        same transaction; a ``callback_url`` replaces the jobs' own."""
        missing: list[str] = []
        try:
            with self._tx() as db:
                for job_id in job_ids:
                    if set_options:
                        cur = db.execute("UPDATE jobs SET held = 0, hold_expires = NULL, attenuation_limit_db = ?, "
                                         "callback_url = COALESCE(?, callback_url) "
                                         "WHERE job_id = ? AND uid = ? AND held = 1",
                                         (attenuation_limit_db, callback_url, job_id, uid))
                    else:
                        cur = db.execute("UPDATE jobs SET held = 0, hold_expires = NULL, "
                                         "callback_url = COALESCE(?, callback_url) "
                                         "WHERE job_id = ? AND uid = ? AND held = 1", (callback_url, job_id, uid))
                    if cur.rowcount != 1:
                        missing.append(job_id)
                if missing:
                    raise _Rollback
                if idempotent is not None:
                    _fill_key(db, uid, idempotent, job_ids)
        except _Rollback:
            return missing
        return []

    # -- idempotency keys -----------------------------------------------------------------------------

    def reserve_key(self, uid: int, key: str, now: float, hold_seconds: float, max_keys: int
                    ) -> IdempotencyRecord:
        """The record under the user's ``key``: the stored reply of an earlier success, or a new
        reservation (a lapsed one is replaced). Raises :class:`IdempotencyConflict` while another request
        holds the reservation, :class:`TooManyKeys` when the user has ``max_keys`` live keys."""
        with self._tx() as db:
            row = db.execute("SELECT token, request_sha256, reply, job_ids, expires_at FROM idempotency_keys "
                             f"WHERE uid = ? AND idem_key = ?{db.for_update}", (uid, key)).fetchone()
            if row is not None and row[4] >= now:
                if row[2] is None:
                    raise IdempotencyConflict("reserved by a request that is still running")
                return IdempotencyRecord(row[0], row[1], bytes(row[2]), row[3].split(), row[4])
            if row is not None:
                db.execute("DELETE FROM idempotency_keys WHERE uid = ? AND idem_key = ?", (uid, key))
            live = db.execute("SELECT COUNT(*) FROM idempotency_keys WHERE uid = ? AND expires_at >= ?",
                              (uid, now)).fetchone()[0]
            if live >= max_keys:
                raise TooManyKeys(f"at most {max_keys} idempotency keys per user at a time")
            token = secrets.token_urlsafe(12)
            cur = db.execute("INSERT INTO idempotency_keys (uid, idem_key, token, created_at, expires_at) "
                             "VALUES (?, ?, ?, ?, ?) ON CONFLICT (uid, idem_key) DO NOTHING",
                             (uid, key, token, now, now + hold_seconds))
            if cur.rowcount != 1:   # another replica reserved it between our read and our insert
                raise IdempotencyConflict("reserved by a request that is still running")
        return IdempotencyRecord(token, "", None, [], now + hold_seconds)

    def renew_key(self, uid: int, key: str, token: str, until: float) -> bool:
        with self._locked() as db:
            cur = db.execute("UPDATE idempotency_keys SET expires_at = ? WHERE uid = ? AND idem_key = ? "
                                   "AND token = ? AND reply IS NULL", (until, uid, key, token))
            return bool(cur.rowcount == 1)

    def release_key(self, uid: int, key: str, token: str) -> None:
        """Drop a reservation (its request failed); a stored reply stays."""
        with self._locked() as db:
            db.execute("DELETE FROM idempotency_keys WHERE uid = ? AND idem_key = ? AND token = ? "
                             "AND reply IS NULL", (uid, key, token))

    def sweep_keys(self, now: float) -> int:
        """Forget idempotency keys (replies and lapsed reservations) whose time ran out before ``now``."""
        with self._locked() as db:
            return int(db.execute("DELETE FROM idempotency_keys WHERE expires_at < ?", (now,)).rowcount)

    def get_job(self, job_id: str) -> JobRow | None:
        with self._reading() as db:
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
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
        with self._reading() as db:
            return [JobRow(*r) for r in db.execute(sql, args).fetchall()]

    def count_queued(self, uid: int) -> int:
        """Jobs of the user that are not finished yet (for the queued-jobs limit)."""
        with self._reading() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE uid = ? AND status NOT IN (?, ?)", (uid, COMPLETED, FAILED)
            ).fetchone()
        return int(row[0])

    def start_job(self, job_id: str, attenuation_limit_db: float | None, set_options: bool,
                  callback_url: str | None = None) -> bool:
        """Let a held job run (setting its options, and its callback URL when one is given)."""
        with self._locked() as db:
            if callback_url is not None:
                db.execute("UPDATE jobs SET callback_url = ? WHERE job_id = ?", (callback_url, job_id))
            if set_options:
                cur = db.execute(
                    "UPDATE jobs SET held = 0, hold_expires = NULL, attenuation_limit_db = ? WHERE job_id = ?",
                    (attenuation_limit_db, job_id))
            else:
                cur = db.execute("UPDATE jobs SET held = 0, hold_expires = NULL WHERE job_id = ?", (job_id,))
            return bool(cur.rowcount == 1)

    def renew_holds(self, uid: int, job_ids: list[str], until: float) -> list[str]:
        """Push the sweep time of the user's held jobs to ``until``; returns the ids that are not (or no
        longer) held jobs of ``uid``."""
        missing = []
        with self._tx() as db:
            for job_id in job_ids:
                cur = db.execute("UPDATE jobs SET hold_expires = ? WHERE job_id = ? AND uid = ? AND held = 1",
                                 (until, job_id, uid))
                if cur.rowcount != 1:
                    missing.append(job_id)
        return missing

    def sweep_held(self, now: float, limit: int = 100) -> list[JobRow]:
        """Delete held jobs whose hold ran out before ``now`` (at most ``limit``); returns their rows (their
        blobs are the caller's to delete). Replicas sweeping at once delete each job once."""
        with self._tx() as db:
            rows = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE held = 1 AND hold_expires < ? LIMIT ?{db.skip_locked}",
                (now, limit)).fetchall()
            for row in rows:
                db.execute("DELETE FROM jobs WHERE job_id = ?", (row[0],))
        return [JobRow(*r) for r in rows]

    def delete_job(self, job_id: str) -> JobRow | None:
        """Remove the job's row; returns it (its blobs are the caller's to delete)."""
        with self._tx() as db:
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?{db.for_update}",
                             (job_id,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
        return JobRow(*row)

    def claim_next(self, owner: str, lease_seconds: float, max_attempts: int) -> JobRow | None:
        """Lease the next runnable job (pending and not held, or in flight with an expired lease), fairly
        across users: the user with the fewest jobs running goes first, then the one served least
        recently (``users.last_served``, set by every claim), then the user's oldest job. So one user's
        queue never holds back another user's job: it waits at most for the jobs already running.
        A job that already used ``max_attempts`` leases fails instead (a poison file must not loop).
        The returned row's ``attempts`` names this claim in the worker's later writes."""
        now = time.time()
        runnable = "held = 0 AND (status = ? OR (status IN (?, ?, ?) AND lease_expires < ?))"
        runnable_args = (PENDING, *IN_FLIGHT, now)
        with self._tx() as db:
            while True:
                # Users first (one pass over the runnable rows, the ordering subqueries once per user),
                # then the chosen user's oldest job: a claim costs about the same with 5,000 jobs queued.
                uids = [r[0] for r in db.execute(
                    f"SELECT j.uid FROM jobs j WHERE {runnable} GROUP BY j.uid ORDER BY "
                    "(SELECT COUNT(*) FROM jobs r WHERE r.uid = j.uid AND r.status IN (?, ?, ?) "
                    "AND r.lease_expires >= ?), "
                    "COALESCE((SELECT u.last_served FROM users u WHERE u.uid = j.uid), 0), MIN(j.created_at), j.uid "
                    "LIMIT ?",
                    (*runnable_args, *IN_FLIGHT, now, _CLAIM_CANDIDATES)).fetchall()]
                row = None
                for uid in uids:   # on PostgreSQL another replica may hold all of a user's rows right now
                    row = db.execute(
                        f"SELECT {_JOB_COLUMNS} FROM jobs WHERE uid = ? AND {runnable} "
                        f"ORDER BY created_at, job_id LIMIT 1{db.skip_locked}", (uid, *runnable_args)).fetchone()
                    if row is not None:
                        break
                if row is None:
                    return None
                job = JobRow(*row)
                if job.attempts >= max_attempts:
                    db.execute(
                        "UPDATE jobs SET status = ?, error_code = 'INTERNAL', error_msg = ?, mod_time = ?, "
                        "lease_owner = NULL, lease_expires = NULL WHERE job_id = ?",
                        (FAILED, f"processing stopped {job.attempts} times; giving up", now, job.job_id))
                    if job.callback_url:
                        enqueue_webhook(db, job.job_id, job.uid, job.callback_url, now)
                    continue
                db.execute(
                    "UPDATE jobs SET status = ?, progress = 0, lease_owner = ?, lease_expires = ?, "
                    "attempts = attempts + 1, mod_time = ? WHERE job_id = ?",
                    (PRE_PROCESSING, owner, now + lease_seconds, now, job.job_id))
                # Strictly increasing per claim, so two claims in one clock tick still take turns.
                db.execute("UPDATE users SET last_served = "
                           "(SELECT MAX(last_served) FROM users) + 1 WHERE uid = ?", (job.uid,))
                return JobRow(**{**job.__dict__, "status": PRE_PROCESSING, "progress": 0.0, "mod_time": now,
                                 "lease_owner": owner, "lease_expires": now + lease_seconds,
                                 "attempts": job.attempts + 1})

    def update_job(self, job_id: str, owner: str, lease_seconds: float, *, status: str | None = None,
                   progress: float | None = None, attempt: int | None = None) -> bool:
        """Renew the lease (and set status/progress). False when the job is gone or leased by another
        (or, with ``attempt``, claimed again since that attempt)."""
        now = time.time()
        sets: list[str] = ["lease_expires = ?"]
        args: list[object] = [now + lease_seconds]
        if status is not None:
            sets += ["status = ?", "mod_time = ?"]
            args += [status, now]
        if progress is not None:
            sets.append("progress = ?")
            args.append(progress)
        held, held_args = _lease_held(owner, attempt)
        with self._locked() as db:
            cur = db.execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE job_id = ? AND {held}", [*args, job_id, *held_args])
            return bool(cur.rowcount == 1)

    def finish_job(self, job_id: str, owner: str, *, result_blob: str | None = None,
                   result_format: str | None = None, error: tuple[str, str] | None = None,
                   attempt: int | None = None) -> bool:
        """Mark the job completed (recording usage) or failed. False when the lease was lost."""
        now = time.time()
        held, held_args = _lease_held(owner, attempt)
        with self._tx() as db:
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ? AND {held}{db.for_update}",
                             (job_id, *held_args)).fetchone()
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
            if job.callback_url:   # the delivery is due in the same transaction: a crash cannot lose it
                enqueue_webhook(db, job_id, job.uid, job.callback_url, now)
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
        with self._locked() as db:
            return int(db.execute(sql, args).rowcount)

    def job_stats(self) -> tuple[dict[str, int], int, float | None]:
        """Jobs per state; runnable pending jobs (not held); the creation time of the oldest of those."""
        with self._reading() as db:
            counts = {s: int(n) for s, n in db.execute(
                "SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()}
            queued, oldest = db.execute(
                "SELECT COUNT(*), MIN(created_at) FROM jobs WHERE status = ? AND held = 0", (PENDING,)).fetchone()
        return counts, int(queued), oldest

    def usage_today(self, uid: int) -> tuple[int, float]:
        """What the user was admitted today (UTC), over all their keys: upload bytes, and seconds of
        audio (x channels: jobs count when submitted, streams when they close)."""
        with self._reading() as db:
            row = db.execute(
                "SELECT COALESCE(SUM(upload_bytes), 0), COALESCE(SUM(admitted_seconds), 0) FROM usage "
                "WHERE uid = ? AND day = ?", (uid, _day(time.time()))).fetchone()
        return int(row[0]), float(row[1])

    def uploaded_today(self, uid: int) -> int:
        """Bytes the user's accepted uploads took today (UTC), over all their keys."""
        return self.usage_today(uid)[0]

    def record_upload(self, key_id: int, uid: int, nbytes: int, seconds: float = 0.0) -> None:
        """An accepted upload: its bytes, and its billed seconds against the daily audio quota."""
        with self._locked() as db:
            _add_usage(db, key_id, uid, time.time(), upload_bytes=nbytes, admitted_seconds=seconds)

    def record_stream(self, key_id: int, uid: int, billed_seconds: float) -> None:
        """Usage of a finished live stream (seconds of audio x channels)."""
        with self._locked() as db:
            _add_usage(db, key_id, uid, time.time(), billed_seconds=billed_seconds,
                       admitted_seconds=billed_seconds)

    def usage(self, key_id: int) -> list[tuple[str, float, int, int]]:
        """Per-day (day, billed_seconds, upload_bytes, jobs) of one key."""
        with self._reading() as db:
            return [(str(d), float(b), int(u), int(j)) for d, b, u, j in db.execute(
                "SELECT day, billed_seconds, upload_bytes, jobs FROM usage WHERE key_id = ? ORDER BY day",
                (key_id,)).fetchall()]
