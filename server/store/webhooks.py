"""The store's side of job webhooks: the per-user signing secret and the delivery outbox.

The outbox row of a job is written in the same transaction that finishes the job
(:func:`enqueue_webhook`, called by :meth:`Store.finish_job` and by a claim that gives up on a
job), so a server killed between a job's end and its delivery still delivers after its restart,
and on a shared database any replica does. Deliverers claim due rows with a lease
(:meth:`WebhookStore.claim_webhooks`), like workers claim jobs; a row whose deliverer died is
claimed again when the lease runs out. Delivery is at least once.

The secrets are kept as they are shown, in the ``users`` row: a receiver must be able to check a
signature for as long as it holds the secret, so a secret cannot depend on anything the operator
rotates (the key pepper). Someone with a copy of the database could forge webhooks to the users'
receivers (not call hushwire): keep backups as private as the database.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass

from server.store.engines import Engine, StoreError

__all__ = ["OUTBOX_DELIVERED", "OUTBOX_FAILED", "OUTBOX_PENDING", "OutboxRow", "WebhookSecrets", "WebhookStore",
           "enqueue_webhook"]

OUTBOX_PENDING, OUTBOX_DELIVERED, OUTBOX_FAILED = "pending", "delivered", "failed"
SECRET_PREFIX = "whsec_"


@dataclass(frozen=True)
class OutboxRow:
    event_id: str
    job_id: str
    uid: int
    url: str
    created_at: float
    next_attempt_at: float
    attempts: int
    state: str
    last_status: int | None
    last_error: str | None
    last_attempt_at: float | None
    done_at: float | None
    lease_owner: str | None
    lease_expires: float | None


_OUTBOX_COLUMNS = ", ".join(OutboxRow.__dataclass_fields__)


@dataclass(frozen=True)
class WebhookSecrets:
    """The secrets deliveries to a user are signed with: the current one, and the previous one until
    ``previous_valid_until`` (a rotation's grace period)."""

    current: str
    previous: str | None
    previous_valid_until: float | None

    def signing_keys(self, now: float) -> list[str]:
        keys = [self.current]
        if self.previous and self.previous_valid_until and now < self.previous_valid_until:
            keys.append(self.previous)
        return keys


def _new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def enqueue_webhook(db: Engine, job_id: str, uid: int, url: str, now: float) -> None:
    """The job's delivery, due now; in the caller's transaction (the one that finished the job)."""
    db.execute(
        f"INSERT INTO webhook_outbox ({_OUTBOX_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0, ?, NULL, NULL, NULL, NULL, "
        "NULL, NULL)", ("evt_" + secrets.token_urlsafe(16), job_id, uid, url, now, now, OUTBOX_PENDING))


class WebhookStore:
    """Mixed into :class:`server.store.Store`, which supplies the connection through ``_locked`` (one
    statement), ``_tx`` (a transaction) and ``_reading`` (reads), all bounded by the store's timeout."""

    def _locked(self) -> contextlib.AbstractContextManager[Engine]:
        raise NotImplementedError

    def _tx(self) -> contextlib.AbstractContextManager[Engine]:
        raise NotImplementedError

    def _reading(self) -> contextlib.AbstractContextManager[Engine]:
        raise NotImplementedError

    # -- secrets ------------------------------------------------------------------------------

    def webhook_secrets(self, uid: int, grace_seconds: float) -> WebhookSecrets:
        """The user's secrets, creating the first one on first use. StoreError for an unknown user."""
        with self._tx() as db:
            row = db.execute(
                "SELECT webhook_secret, webhook_prev_secret, webhook_rotated_at FROM users WHERE uid = ?"
                f"{db.for_update}", (uid,)).fetchone()
            if row is None:
                raise StoreError(f"no user with uid {uid}")
            current, prev, rotated = row
            if current is None:
                current = _new_secret()
                db.execute("UPDATE users SET webhook_secret = ? WHERE uid = ?", (current, uid))
        until = rotated + grace_seconds if prev is not None and rotated is not None else None
        return WebhookSecrets(current, prev, until)

    def rotate_webhook_secret(self, uid: int, grace_seconds: float) -> WebhookSecrets:
        """A new secret; the current one keeps signing (as well) for ``grace_seconds``."""
        now = time.time()
        with self._tx() as db:
            row = db.execute(f"SELECT webhook_secret FROM users WHERE uid = ?{db.for_update}",
                                   (uid,)).fetchone()
            if row is None:
                raise StoreError(f"no user with uid {uid}")
            db.execute(
                "UPDATE users SET webhook_secret = ?, webhook_prev_secret = ?, webhook_rotated_at = ? WHERE uid = ?",
                (_new_secret(), row[0], now, uid))
        return self.webhook_secrets(uid, grace_seconds)

    # -- the outbox ---------------------------------------------------------------------------

    def webhook_of(self, job_id: str) -> OutboxRow | None:
        with self._reading() as db:
            row = db.execute(f"SELECT {_OUTBOX_COLUMNS} FROM webhook_outbox WHERE job_id = ? "
                                   "ORDER BY created_at DESC LIMIT 1", (job_id,)).fetchone()
        return OutboxRow(*row) if row else None

    def claim_webhooks(self, owner: str, lease_seconds: float, limit: int) -> list[OutboxRow]:
        """Lease up to ``limit`` due deliveries (pending, due, and not leased by a live deliverer)."""
        now = time.time()
        with self._tx() as db:
            rows = [OutboxRow(*r) for r in db.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM webhook_outbox WHERE state = ? AND next_attempt_at <= ? AND "
                "(lease_expires IS NULL OR lease_expires < ?) ORDER BY next_attempt_at "
                f"LIMIT ?{db.skip_locked}", (OUTBOX_PENDING, now, now, limit)).fetchall()]
            for r in rows:
                db.execute("UPDATE webhook_outbox SET lease_owner = ?, lease_expires = ? WHERE event_id = ?",
                                 (owner, now + lease_seconds, r.event_id))
        return rows

    def webhook_attempted(self, event_id: str, owner: str, *, state: str, status: int | None, error: str | None,
                          next_attempt_at: float | None) -> bool:
        """Record one attempt's outcome (and release the lease). False if another deliverer took the row."""
        now = time.time()
        with self._locked() as db:
            cur = db.execute(
                "UPDATE webhook_outbox SET attempts = attempts + 1, state = ?, last_status = ?, last_error = ?, "
                "last_attempt_at = ?, next_attempt_at = COALESCE(?, next_attempt_at), done_at = ?, "
                "lease_owner = NULL, lease_expires = NULL WHERE event_id = ? AND lease_owner = ?",
                (state, status, error, now, next_attempt_at, None if state == OUTBOX_PENDING else now, event_id,
                 owner))
            return bool(cur.rowcount == 1)

    def release_webhook_leases(self, owner: str | None = None) -> int:
        """Give up delivery leases: ``owner``'s (a deliverer stopping with attempts unfinished), or every
        one (an embedded store at start-up: no other deliverer exists)."""
        sql = "UPDATE webhook_outbox SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner IS NOT NULL"
        args: list[object] = []
        if owner is not None:
            sql += " AND lease_owner = ?"
            args.append(owner)
        with self._locked() as db:
            return int(db.execute(sql, args).rowcount)

    def purge_webhooks(self, finished_before: float) -> int:
        """Delete finished deliveries (delivered or given up) older than ``finished_before``."""
        with self._locked() as db:
            return int(db.execute("DELETE FROM webhook_outbox WHERE state <> ? AND done_at < ?",
                                        (OUTBOX_PENDING, finished_before)).rowcount)

    def webhooks_pending(self) -> int:
        with self._reading() as db:
            return int(db.execute("SELECT COUNT(*) FROM webhook_outbox WHERE state = ?",
                                        (OUTBOX_PENDING,)).fetchone()[0])
