"""Open the configured backends: the store (jobs, keys, usage) and the blob store (uploads, results).

The one place that turns settings (:class:`~server.config.ServerConfig`) into the two backends, for
``hushwire serve`` and ``hushwire keys`` alike. It sits above :mod:`server.config`,
:mod:`server.store`, :mod:`server.blobs` and :mod:`server.s3`, so none of those imports another's
opener (``blobs`` no longer imports ``s3``, nor ``config`` the stores).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from server.blobs import BlobStore, LocalBlobs
from server.config import ConfigError, ServerConfig
from server.signing import load_secret
from server.store import Store

__all__ = ["open_blob_url", "open_blobs", "open_store"]


def open_store(config: ServerConfig, *, timeout: float | None = None, separate_reads: bool = False) -> Store:
    """The store with its key pepper (configured, or generated into the data dir on first use), and the
    previous pepper of a rotation if one is configured.
    ``timeout`` bounds each operation's wait for a lock (the server passes ``--store-timeout``;
    ``hushwire keys`` waits as long as the engine does); the server also gives reads a connection of
    their own (``separate_reads``, see :class:`~server.store.Store`). Raises :class:`server.store.StoreError`
    (:class:`~server.store.StoreUnavailable` when the database cannot be reached)."""
    previous = config.key_pepper_previous.encode() if config.key_pepper_previous else None
    return Store(config.store_url, load_secret(config.key_pepper, None, config.data_dir, "key_pepper"), previous,
                 timeout=timeout, separate_reads=separate_reads)


def open_blobs(config: ServerConfig) -> BlobStore:
    """The blob store the blob URL names (a folder in the data dir by default); no network yet."""
    return open_blob_url(config.blob_url, config.data_dir)


def open_blob_url(url: str | None, data_dir: Path) -> BlobStore:
    """The store a blob URL names (``None``: a folder in the data dir). Touches no network: call
    :meth:`BlobStore.check` to find out whether it works. A URL that cannot work is a ConfigError.
    Job workers reopen the server's store with it (:attr:`BlobStore.url`)."""
    if not url or url.startswith("file://"):
        return LocalBlobs.from_url(url, data_dir)
    if urlsplit(url).scheme == "s3":
        from server.s3 import S3Blobs  # boto3 is an optional dependency (the `scale` extra)

        return S3Blobs.from_url(url, data_dir / "spool")
    raise ConfigError(f"unsupported blob URL {url!r}: use file:///PATH or s3://BUCKET?endpoint=URL")
