"""The gRPC metadata keys of the contract (docs/design.md, "Auth" and "Errors"), and reading the trailer."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["AUTHORIZATION_KEY", "ERROR_CODE_KEY", "MAX_KEY_CHARS", "RESULT_TOKEN_KEY", "error_code"]

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


def error_code(trailers: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The ``hushwire-error-code`` in a call's trailing metadata, or None when there is none."""
    for key, value in trailers or ():
        if key == ERROR_CODE_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None
