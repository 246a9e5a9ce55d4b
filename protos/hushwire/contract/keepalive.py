"""HTTP/2 keepalive: the server finds dead peers, and clients ping exactly as often as it allows.

One interval, :data:`KEEPALIVE_INTERVAL_S`, is the contract between the two sides (the server takes
:data:`SERVER_OPTIONS`, clients :data:`CLIENT_OPTIONS`; the gateway's channel to the server is a client too):

- The server pings every connection every ``KEEPALIVE_INTERVAL_S`` (idle ones too) and closes one that
  does not answer within :data:`KEEPALIVE_TIMEOUT_S`, so a peer that vanished without a FIN or RST (a
  NAT that forgot the mapping, a laptop that went to sleep, a cut cable) frees its calls, its streams'
  per-user slots and their memory within ~40 s instead of never.
- A client pings at the same interval while it has calls open, so it notices a dead server as fast.
- grpc servers send GOAWAY ``too_many_pings`` to a client that pings more often than their minimum
  (5 min by default) more than twice without data in between. This server accepts pings down to half
  the interval: a client on the interval is never refused, whatever the timer jitter.

Pure Python constants: importable without grpc.
"""

from __future__ import annotations

__all__ = ["CLIENT_OPTIONS", "KEEPALIVE_INTERVAL_S", "KEEPALIVE_TIMEOUT_S", "SERVER_OPTIONS"]

KEEPALIVE_INTERVAL_S = 30
KEEPALIVE_TIMEOUT_S = 10

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_INTERVAL_S * 1000),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000),
    ("grpc.keepalive_permit_without_calls", 1),        # ping idle connections too; accept clients' pings
    ("grpc.http2.max_pings_without_data", 0),          # keep pinging a connection that sends no data
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_INTERVAL_S * 1000 // 2),
    ("grpc.http2.max_ping_strikes", 2),                # grpc's default, stated: 3 early pings -> GOAWAY
)

CLIENT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_INTERVAL_S * 1000),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000),
    ("grpc.http2.max_pings_without_data", 0),          # an idle live stream (no data) still pings
)
