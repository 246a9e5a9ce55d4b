"""Persistent state: users and API keys (and, later, jobs and usage) in SQLite.

All SQL of the project lives in this module, behind a few methods, so another engine can
replace SQLite without touching the servicers (DESIGN.md, "Growing past one machine").

Keys are random 192-bit tokens, so a plain SHA-256 of the key is stored: a salt adds nothing
against guessing a uniformly random 192-bit secret, and the raw key is never stored or logged.
The lookup goes through the hash index; the final comparison is constant-time.
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

__all__ = ["KEY_PREFIX", "KeyRecord", "Principal", "Store", "StoreError"]

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
]


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


def _hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class Store:
    """SQLite-backed store. Safe to share between threads; other processes may open the same file."""

    def __init__(self, path: str | Path) -> None:
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
                "INSERT INTO api_keys (uid, key_hash, created_at) VALUES (?, ?, ?)",
                (uid, _hash_key(key), time.time()),
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
        digest = _hash_key(key)
        with self._lock:
            row = self._db.execute(
                "SELECT k.key_id, k.uid, u.name, k.key_hash FROM api_keys k JOIN users u ON u.uid = k.uid "
                "WHERE k.key_hash = ? AND k.revoked_at IS NULL",
                (digest,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row[3], digest):
            return None
        return Principal(uid=row[1], key_id=row[0], name=row[2])
