"""Persistent state: users, API keys, jobs and usage, in SQLite (embedded) or PostgreSQL (shared).

``Store(url_or_path, key_pepper)`` opens either; see :mod:`server.store.engines` for the URL
forms, :mod:`server.store.schema` for the one schema both get, and :mod:`server.store.core` for
the operations, and :mod:`server.store.aio` for the event loop's bounded, awaitable facade. No SQL
lives outside this package.
"""

from server.store.aio import AsyncStore, Settled
from server.store.core import (
    COMPLETED,
    FAILED,
    IN_FLIGHT,
    KEY_PREFIX,
    PENDING,
    POST_PROCESSING,
    PRE_PROCESSING,
    PROCESSING,
    IdempotencyConflict,
    IdempotencyRecord,
    JobRow,
    KeyRecord,
    Principal,
    SecretMismatch,
    Store,
    TooManyKeys,
)
from server.store.engines import StoreError, StoreUnavailable, redact

__all__ = [
    "COMPLETED", "FAILED", "IN_FLIGHT", "KEY_PREFIX", "PENDING", "POST_PROCESSING", "PRE_PROCESSING", "PROCESSING",
    "AsyncStore", "IdempotencyConflict", "IdempotencyRecord", "JobRow", "KeyRecord", "Principal", "SecretMismatch",
    "Settled", "Store",
    "StoreError", "StoreUnavailable", "TooManyKeys", "redact",
]
