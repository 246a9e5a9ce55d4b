"""The one schema, as numbered migrations, for SQLite and PostgreSQL.

The migrations are written once, in SQLite's spelling (the embedded default, whose databases
already carry versions 1-3). :func:`render` turns a statement into PostgreSQL's: integer keys
become identity columns, ``REAL`` becomes ``DOUBLE PRECISION`` (PostgreSQL's ``REAL`` is 4 bytes,
too coarse for unix times), ``BLOB`` becomes ``BYTEA`` and every ``INTEGER`` a ``BIGINT`` (SQLite's
integers are 64-bit; daily upload bytes overflow 32). Add a migration by appending to
:data:`MIGRATIONS`; never edit one that has shipped.
"""

from __future__ import annotations

import re

__all__ = ["MIGRATIONS", "VERSION", "render", "statements"]

MIGRATIONS: list[str] = [
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
    # version 4: fair claims (when each user was last given a worker) and the daily audio quota
    # (seconds admitted: jobs at submit, streams when they close)
    """
    ALTER TABLE users ADD COLUMN last_served REAL NOT NULL DEFAULT 0;
    ALTER TABLE usage ADD COLUMN admitted_seconds REAL NOT NULL DEFAULT 0;
    CREATE INDEX jobs_by_user_status ON jobs (uid, status);
    CREATE INDEX users_by_service ON users (last_served);
    """,
    # version 5: held jobs expire unless renewed (rows held before this version get the default 120 s)
    """
    ALTER TABLE jobs ADD COLUMN hold_expires REAL;
    UPDATE jobs SET hold_expires = mod_time + 120 WHERE held = 1;
    CREATE INDEX jobs_by_hold ON jobs (held, hold_expires);
    """,
    # version 6: idempotency keys: a reservation (reply NULL, token set) while the first request runs,
    # then the successful reply and the request's fingerprint, until expires_at
    """
    CREATE TABLE idempotency_keys (
        uid INTEGER NOT NULL,
        idem_key TEXT NOT NULL,
        token TEXT NOT NULL,
        request_sha256 TEXT NOT NULL DEFAULT '',
        reply BLOB,
        job_ids TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (uid, idem_key)
    );
    CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);
    """,
    # version 7: fingerprints of the secrets the database was first used with (the key pepper, the
    # signing secret): one 'current' per secret, and the 'retired' ones a rotation replaced
    """
    CREATE TABLE secret_fingerprints (
        name TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        status TEXT NOT NULL,
        recorded_at REAL NOT NULL,
        PRIMARY KEY (name, fingerprint)
    );
    """,
    # version 8: signed job webhooks: a job's callback URL, each user's webhook secret (and the previous
    # one, which signs as well for a while after a rotation), and the outbox of deliveries
    """
    ALTER TABLE jobs ADD COLUMN callback_url TEXT;
    ALTER TABLE users ADD COLUMN webhook_secret TEXT;
    ALTER TABLE users ADD COLUMN webhook_prev_secret TEXT;
    ALTER TABLE users ADD COLUMN webhook_rotated_at REAL;
    CREATE TABLE webhook_outbox (
        event_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        uid INTEGER NOT NULL,
        url TEXT NOT NULL,
        created_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        last_status INTEGER,
        last_error TEXT,
        last_attempt_at REAL,
        done_at REAL,
        lease_owner TEXT,
        lease_expires REAL
    );
    CREATE INDEX webhook_outbox_due ON webhook_outbox (state, next_attempt_at);
    CREATE INDEX webhook_outbox_by_job ON webhook_outbox (job_id);
    """,
]

VERSION = len(MIGRATIONS)

_POSTGRES_TYPES = [
    (re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
]


def statements(script: str) -> list[str]:
    """The statements of one migration (they hold no semicolons inside literals)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def render(statement: str, dialect: str) -> str:
    """``statement`` in the spelling of ``dialect`` (``sqlite`` or ``postgresql``)."""
    if dialect == "sqlite":
        return statement
    for pattern, replacement in _POSTGRES_TYPES:
        statement = pattern.sub(replacement, statement)
    return statement
