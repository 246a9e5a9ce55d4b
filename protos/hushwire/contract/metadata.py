"""The gRPC metadata keys of the contract (docs/design.md, "Auth" and "Errors"), and reading the trailer."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["AUTHORIZATION_KEY", "ERROR_CODE_KEY", "MAX_KEY_CHARS", "MAX_POOL_RETRIES", "REFUSED_FOR_CAP",
           "REFUSED_FOR_KEY", "REFUSED_FOR_LOAD", "REFUSED_FOR_USERS", "RESULT_TOKEN_KEY", "SLOW_CONSUMER_SECONDS_KEY",
           "error_code", "pool_retries", "refused_for", "slow_consumer_seconds"]

# ``<key>`` or ``Bearer <key>`` on every RPC but health, reflection and a token-authorised download.
AUTHORIZATION_KEY = "authorization"
# An API key is 32 characters; an ``Authorization`` value longer than this is refused unread
# (API_KEY_NOT_FOUND) by the gateway and the server alike, so it never reaches gRPC metadata limits.
MAX_KEY_CHARS = 1024
# The signed result URL's token, which ``Jobs.DownloadResult`` accepts instead of a key.
RESULT_TOKEN_KEY = "hushwire-result-token"
# Trailing metadata: the contract code (a key of :data:`hushwire.contract.errors.ERRORS`) of an error
# a hushwire server sent; its absence means the error came from elsewhere (grpc, a proxy).
ERROR_CODE_KEY = "hushwire-error-code"
# Trailing metadata beside an OVERLOADED code: why the stream was refused. "load": this server process
# cannot keep one more stream in real time (its own admission control), so a sibling process of the
# same group (serve --processes) may accept it. "cap": the operator's --max-streams, counted over the
# whole group. "users": the group's table of users streaming now is full (more distinct users at once
# than server/shared.py's USER_ROWS), although no configured limit was reached. No other connection to
# that server passes "cap" or "users"; another replica may.
REFUSED_FOR_KEY = "hushwire-refused-for"
REFUSED_FOR_LOAD = "load"
REFUSED_FOR_CAP = "cap"
REFUSED_FOR_USERS = "users"
# Initial metadata of a live stream (StreamEnhance): the server's slow-consumer time in seconds
# (``--slow-consumer-seconds``), after which it ends a stream whose client takes no response. A client
# that stopped reading for that long knows the end is SLOW_CONSUMER even when the status itself was
# lost behind the unread audio (a reset, a proxy), and does not resume the stream.
SLOW_CONSUMER_SECONDS_KEY = "hushwire-slow-consumer-seconds"
# A pool of connections (the gateway's --grpc-connections, the client's connections=N) tries a
# stream refused for "load" on at most this many other connections, and never more than the pool's
# size less one, before the refusal is the answer: bounded, so a full group is not asked N times.
MAX_POOL_RETRIES = 2


def _value(trailers: Iterable[tuple[str, str | bytes]] | None, wanted: str) -> str | None:
    for key, value in trailers or ():
        if key == wanted:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def error_code(trailers: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The ``hushwire-error-code`` in a call's trailing metadata, or None when there is none."""
    return _value(trailers, ERROR_CODE_KEY)


def refused_for(trailers: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The ``hushwire-refused-for`` in a call's trailing metadata ("load", "cap" or "users"), or None."""
    return _value(trailers, REFUSED_FOR_KEY)


def slow_consumer_seconds(metadata: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    """The slow-consumer time a server stated in a stream's initial metadata, or None (an older server,
    or a value that is not a positive number)."""
    value = _value(metadata, SLOW_CONSUMER_SECONDS_KEY)
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 < seconds < float("inf") else None


def pool_retries(connections: int) -> int:
    """How many other connections of a pool of ``connections`` a refusal for "load" may be tried on."""
    return max(0, min(connections - 1, MAX_POOL_RETRIES))
