"""Raising the contract's errors on the server: :class:`HushwireError` and :func:`abort_with`.

The codes and their gRPC/HTTP mapping are the contract's (:mod:`hushwire.contract.errors`, one
table for every side); this module is how the server's domain code refuses with one. A
``HushwireError`` carries a code and a human message; :func:`abort_with` ends the RPC with the
code's gRPC status and puts the code in the trailing metadata key ``hushwire-error-code``.
The contract's :func:`quote_input` (client input in a message, quoted and cut) and
:data:`MAX_KEY_CHARS` are re-exported for the server's modules.
"""

from __future__ import annotations

import grpc

from hushwire.contract.errors import ERRORS, MAX_QUOTED_CHARS, ErrorSpec, quote_input
from hushwire.contract.metadata import ERROR_CODE_KEY, MAX_KEY_CHARS, REFUSED_FOR_KEY

__all__ = ["ERRORS", "ERROR_CODE_KEY", "MAX_KEY_CHARS", "MAX_QUOTED_CHARS", "ErrorSpec", "HushwireError", "abort_with",
           "quote_input", "trailing_metadata"]


class HushwireError(Exception):
    """A refusal with a contract code (a key of :data:`ERRORS`) and a human message."""

    def __init__(self, code: str, msg: str | None = None, refused_for: str | None = None) -> None:
        """``refused_for``: with OVERLOADED, why (the ``hushwire-refused-for`` trailer: one of the contract's
        ``REFUSED_FOR_*``, hushwire.contract.metadata)."""
        if code not in ERRORS:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.msg = msg or ERRORS[code].default_msg
        self.refused_for = refused_for
        super().__init__(f"{code}: {self.msg}")

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return ERRORS[self.code].grpc_status

    @property
    def http_status(self) -> int:
        return ERRORS[self.code].http_status


def trailing_metadata(code: str, refused_for: str | None = None) -> tuple[tuple[str, str], ...]:
    if refused_for is None:
        return ((ERROR_CODE_KEY, code),)
    return ((ERROR_CODE_KEY, code), (REFUSED_FOR_KEY, refused_for))


async def abort_with(context: grpc.aio.ServicerContext, err: HushwireError) -> None:
    """End the RPC with the error's status, message and ``hushwire-error-code`` trailer."""
    from server.metrics import METRICS  # here, so importing the error class stays light

    METRICS.errors.labels(err.code).inc()
    await context.abort(err.grpc_status, err.msg, trailing_metadata=trailing_metadata(err.code, err.refused_for))
