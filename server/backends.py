"""Open the configured backends: the store (jobs, keys, usage) and the blob store (uploads, results).

The one place that turns settings (:class:`~server.config.ServerConfig`) into the two backends, for
``hushwire serve`` and ``hushwire keys`` alike. It sits above :mod:`server.config`,
:mod:`server.store` and :mod:`server.blobs`, which import none of each other's openers.
"""

from __future__ import annotations

from server.blobs import BlobStore
from server.blobs import open_blobs as _open_blob_url
from server.config import ServerConfig
from server.signing import load_secret
from server.store import Store

__all__ = ["open_blobs", "open_store"]


def open_store(config: ServerConfig, *, timeout: float | None = None) -> Store:
    """The store with its key pepper (configured, or generated into the data dir on first use).
    ``timeout`` bounds each operation's wait for a lock (the server passes ``--store-timeout``;
    ``hushwire keys`` waits as long as the engine does). Raises :class:`server.store.StoreError`
    (:class:`~server.store.StoreUnavailable` when the database cannot be reached)."""
    return Store(config.store_url, load_secret(config.key_pepper, None, config.data_dir, "key_pepper"),
                 timeout=timeout)


def open_blobs(config: ServerConfig) -> BlobStore:
    """The blob store the blob URL names (a folder in the data dir by default); no network yet."""
    return _open_blob_url(config.blob_url, config.data_dir)
