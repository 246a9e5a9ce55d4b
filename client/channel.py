"""The one place where hushwire's gRPC client channels are made: options and credentials.

Every client of the server (:class:`~client.stream.EnhancerClient`, its asyncio twin,
:class:`~client.jobs.JobsClient`, and the gateway's upstream channel) opens its channel here, so a
channel setting (reconnect backoff today; keepalive and TLS next) is written once and holds for all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

__all__ = ["CHANNEL_OPTIONS", "aio_channel", "channel_credentials", "channel_options", "sync_channel"]

# A restarted or replaced server is found again within ~3 s: grpc's default reconnect backoff grows
# to 120 s, far past any connect budget (``connect_timeout``, 10 s by default).
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 3000),
)


def channel_options(extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """:data:`CHANNEL_OPTIONS` plus a caller's own (a later option of the same name wins in grpc)."""
    return [*CHANNEL_OPTIONS, *extra]


def channel_credentials() -> grpc.ChannelCredentials | None:
    """The channel's credentials; None is plaintext (the only transport the server offers today)."""
    return None


def sync_channel(target: str, extra_options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A blocking channel to ``target`` (``host:port``)."""
    options, creds = channel_options(extra_options), channel_credentials()
    if creds is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, creds, options=options)


def aio_channel(target: str, extra_options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """An asyncio channel to ``target``, with the same options and credentials as :func:`sync_channel`."""
    options, creds = channel_options(extra_options), channel_credentials()
    if creds is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, creds, options=options)
