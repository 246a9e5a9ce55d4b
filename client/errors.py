"""The client's one exception: a gRPC error with hushwire's contract code when the server gave one."""

from __future__ import annotations

import grpc

__all__ = ["ERROR_CODE_KEY", "HushwireClientError", "from_rpc_error", "is_retryable"]

ERROR_CODE_KEY = "hushwire-error-code"


class HushwireClientError(Exception):
    """``code`` is the contract code (e.g. ``API_KEY_NOT_FOUND``), or None when no hushwire server sent it."""

    def __init__(self, status: grpc.StatusCode | None, code: str | None, msg: str) -> None:
        self.status = status
        self.code = code
        self.msg = msg
        label = code or (status.name if status else "ERROR")
        super().__init__(f"{label}: {msg}")


def _trailer_code(err: grpc.RpcError) -> str | None:
    try:
        trailers = err.trailing_metadata()
    except Exception:  # an error raised before any call was made has no trailers
        return None
    for k, v in trailers or ():
        if k == ERROR_CODE_KEY:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


def from_rpc_error(err: grpc.RpcError) -> HushwireClientError:
    status = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    return HushwireClientError(status, _trailer_code(err), details or "")


def is_retryable(err: HushwireClientError) -> bool:
    """Reconnect on UNAVAILABLE, and on INTERNAL/CANCELLED with no hushwire trailer (a proxy lost
    its backend). The caller's own cancel never reaches here: it is not an RpcError we retry."""
    if err.status == grpc.StatusCode.UNAVAILABLE:
        return True
    return err.code is None and err.status in (grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED)
