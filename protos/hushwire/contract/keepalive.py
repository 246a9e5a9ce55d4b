"""HTTP/2 keepalive: the server finds dead peers, and clients ping exactly as often as it allows.

One interval, :data:`KEEPALIVE_INTERVAL_S`, is the contract between the two sides (the server takes
:func:`server_options`, clients :func:`client_options`; the gateway's channel to the server is a client too):

- The server pings every connection every ``KEEPALIVE_INTERVAL_S`` (idle ones too) and closes one that
  does not answer within :data:`KEEPALIVE_TIMEOUT_S`, so a peer that vanished without a FIN or RST (a
  NAT that forgot the mapping, a laptop that went to sleep, a cut cable) frees its calls, its streams'
  per-user slots and their memory within ~40 s instead of never. An operator may make the server ping
  sooner or wait less (``hushwire serve --keepalive-seconds``, ``--keepalive-timeout-seconds``).
- A client pings at the same interval while it has calls open, so it notices a dead server as fast.
- grpc servers send GOAWAY ``too_many_pings`` to a client that pings more often than their minimum
  (5 min by default) more than twice without data in between. This server accepts pings down to half
  the interval, :data:`MIN_PING_INTERVAL_S`: a client on the interval is never refused, whatever the
  timer jitter (``--keepalive-min-ping-seconds`` changes it; above 30 s it would refuse this contract's
  clients).

Pure Python constants: importable without grpc.
"""

from __future__ import annotations

__all__ = [
    "CLIENT_OPTIONS",
    "KEEPALIVE_INTERVAL_S",
    "KEEPALIVE_TIMEOUT_S",
    "MAX_PING_STRIKES",
    "MIN_PING_INTERVAL_S",
    "SERVER_OPTIONS",
    "client_options",
    "server_options",
]

KEEPALIVE_INTERVAL_S = 30
KEEPALIVE_TIMEOUT_S = 10
MIN_PING_INTERVAL_S = KEEPALIVE_INTERVAL_S / 2
MAX_PING_STRIKES = 2   # grpc's default, stated: the third early ping draws GOAWAY too_many_pings


# PING_TIMEOUT: grpc core (since grpc/grpc#34647) waits for a ping's answer for ``grpc.http2.ping_timeout_ms``,
# 60 s by default, whatever ``grpc.keepalive_timeout_ms`` says: with only the latter, a server pinging every
# 2 s with a 1 s timeout took 62 s to drop a peer that had gone silent (tests/test_keepalive.py). Both are set.


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def server_options(interval_s: float = KEEPALIVE_INTERVAL_S, timeout_s: float = KEEPALIVE_TIMEOUT_S,
                   min_ping_s: float = MIN_PING_INTERVAL_S) -> tuple[tuple[str, int], ...]:
    """The server's grpc options: it pings every ``interval_s``, gives up after ``timeout_s``, and
    accepts clients' pings ``min_ping_s`` apart at the closest."""
    return (
        ("grpc.keepalive_time_ms", _ms(interval_s)),
        ("grpc.keepalive_timeout_ms", _ms(timeout_s)),
        ("grpc.http2.ping_timeout_ms", _ms(timeout_s)),    # see PING_TIMEOUT below
        ("grpc.keepalive_permit_without_calls", 1),        # ping idle connections too; accept clients' pings
        ("grpc.http2.max_pings_without_data", 0),          # keep pinging a connection that sends no data
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(min_ping_s)),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
    )


def client_options(interval_s: float = KEEPALIVE_INTERVAL_S, timeout_s: float = KEEPALIVE_TIMEOUT_S
                   ) -> tuple[tuple[str, int], ...]:
    """A client's grpc options: it pings every ``interval_s`` while it has calls open."""
    return (
        ("grpc.keepalive_time_ms", _ms(interval_s)),
        ("grpc.keepalive_timeout_ms", _ms(timeout_s)),
        ("grpc.http2.ping_timeout_ms", _ms(timeout_s)),    # see PING_TIMEOUT below
        ("grpc.http2.max_pings_without_data", 0),          # an idle live stream (no data) still pings
    )


SERVER_OPTIONS = server_options()
CLIENT_OPTIONS = client_options()
