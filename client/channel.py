"""The one place hushwire's gRPC client channels are made: their options, and plaintext, TLS or mutual TLS.

Every client of the server (:class:`~client.stream.EnhancerClient`, its asyncio twin,
:class:`~client.jobs.JobsClient`, and the gateway's upstream channel) opens its channel here, so a
channel setting (:data:`CHANNEL_OPTIONS`: keepalive and reconnect backoff) holds for all.

A *pool* of channels (:func:`open_pool`, :func:`open_aio_pool`) gives each channel its own TCP
connection (grpc otherwise shares one between equal channels). A server of several sibling processes
on one port (``hushwire serve --processes N``) gets each connection in one process, so calls spread
over the processes only as far as the caller's connections do.

``tls_ca`` (a PEM file) turns TLS on and is the only CA trusted for the server's certificate;
``tls_cert`` and ``tls_key`` add a client certificate for a server that requires mutual TLS
(``hushwire serve --tls-client-ca``). Without ``tls_ca`` the channel is plaintext, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from client.errors import HushwireClientError
from hushwire.contract.keepalive import CLIENT_OPTIONS as KEEPALIVE_OPTIONS

__all__ = ["CHANNEL_OPTIONS", "OWN_CONNECTION", "ClientTLS", "channel_options", "open_aio_channel", "open_aio_pool",
           "open_channel", "open_pool"]

# Every channel's options: the server's keepalive contract (hushwire.contract.keepalive), and a reconnect
# backoff that finds a restarted or replaced server within ~3 s (grpc's default grows to 120 s, far
# past any connect budget: ``connect_timeout``, 10 s by default).
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    *KEEPALIVE_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 3000),
)

# A channel of a pool: its own connection (subchannel), not the process-wide one equal channels share.
OWN_CONNECTION: tuple[tuple[str, Any], ...] = (("grpc.use_local_subchannel_pool", 1),)


@dataclass(frozen=True)
class ClientTLS:
    """PEM files: the CA that signed the server's certificate, and an optional client certificate and key."""

    ca: str
    cert: str | None = None
    key: str | None = None

    @classmethod
    def of(cls, ca: str | None, cert: str | None = None, key: str | None = None) -> ClientTLS | None:
        """None (plaintext) without a CA; a client certificate needs its key, and TLS."""
        if (cert is None) != (key is None):
            raise ValueError("tls_cert and tls_key go together")
        if ca is None:
            if cert is not None:
                raise ValueError("a client certificate (tls_cert) needs tls_ca: it is only sent over TLS")
            return None
        return cls(ca, cert, key)

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str) -> bytes:
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as exc:
                raise HushwireClientError(None, None, f"cannot read TLS file {path}: {exc.strerror or exc}") \
                    from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca),
            private_key=read(self.key) if self.key is not None else None,
            certificate_chain=read(self.cert) if self.cert is not None else None,
        )


def channel_options(options: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """:data:`CHANNEL_OPTIONS` with ``options`` added or, for an option it already has, replacing it.
    Each option appears once: for an option given twice, grpc (1.85) takes the first, so a caller's
    value placed after the default would be ignored (tests/test_keepalive.py saw a 1 s keepalive ignored)."""
    merged = dict(CHANNEL_OPTIONS)
    merged.update(options)
    return list(merged.items())


def open_channel(target: str, tls: ClientTLS | None = None, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A blocking channel to ``target`` (``host:port``) with :func:`channel_options` (``options`` added)."""
    if tls is None:
        return grpc.insecure_channel(target, options=channel_options(options))
    return grpc.secure_channel(target, tls.credentials(), options=channel_options(options))


def open_aio_channel(target: str, tls: ClientTLS | None = None,
                     options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """The asyncio twin of :func:`open_channel`: the same options and credentials."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=channel_options(options))
    return grpc.aio.secure_channel(target, tls.credentials(), options=channel_options(options))


def _pool_options(n: int) -> Sequence[tuple[str, Any]]:
    if n < 1:
        raise ValueError(f"a pool has at least one connection, not {n}")
    return OWN_CONNECTION if n > 1 else ()


def open_pool(target: str, n: int, tls: ClientTLS | None = None) -> list[grpc.Channel]:
    """``n`` blocking channels to ``target``, each on its own connection (one: a plain channel)."""
    return [open_channel(target, tls, _pool_options(n)) for _ in range(n)]


def open_aio_pool(target: str, n: int, tls: ClientTLS | None = None) -> list[grpc.aio.Channel]:
    """The asyncio twin of :func:`open_pool`."""
    return [open_aio_channel(target, tls, _pool_options(n)) for _ in range(n)]
