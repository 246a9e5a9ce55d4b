"""Signed, expiring result URLs: ``/results/<job id>?expires=<unix s>&sig=<HMAC>``.

The signature is HMAC-SHA256 over ``"<job id>.<expires>"`` with the server's signing secret,
so every replica that shares the secret can check a URL made by any other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from server.errors import HushwireError

__all__ = ["RESULT_URL_TTL_SECONDS", "Signer", "load_secret"]

RESULT_URL_TTL_SECONDS = 24 * 3600


def load_secret(secret: str | None, secret_file: str | None, data_dir: Path, name: str = "signing_secret") -> bytes:
    """The configured secret (value, or file), else one generated into ``data_dir/name`` on first use."""
    if secret:
        return secret.encode()
    if secret_file:
        data = Path(secret_file).read_bytes().strip()
        if not data:
            raise ValueError(f"signing secret file {secret_file} is empty")
        return data
    path = data_dir / name
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_bytes().strip()


class Signer:
    """Signs with ``secret``; checks with it, or with ``previous`` (the secret a rotation replaces, kept
    for the lifetime of the URLs it signed)."""

    def __init__(self, secret: bytes, ttl_seconds: float = RESULT_URL_TTL_SECONDS,
                 previous: bytes | None = None) -> None:
        self._secret = secret
        self._previous = previous
        self.ttl_seconds = ttl_seconds

    def _sig(self, job_id: str, expires: int, secret: bytes | None = None) -> str:
        mac = hmac.new(secret or self._secret, f"{job_id}.{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def sign(self, job_id: str, now: float | None = None) -> tuple[int, str]:
        expires = int((time.time() if now is None else now) + self.ttl_seconds)
        return expires, self._sig(job_id, expires)

    def check(self, job_id: str, token: str) -> None:
        """Raise JOB_NOT_FOUND for a malformed or tampered token, RESULT_URL_EXPIRED for an old one."""
        expires_s, _, sig = token.partition(".")
        if not expires_s.isdigit() or len(expires_s) > 12 or not sig:
            raise HushwireError("JOB_NOT_FOUND")
        expires = int(expires_s)
        valid = hmac.compare_digest(self._sig(job_id, expires), sig)
        if not valid and self._previous:
            valid = hmac.compare_digest(self._sig(job_id, expires, self._previous), sig)
        if not valid:
            raise HushwireError("JOB_NOT_FOUND")
        if expires < time.time():
            raise HushwireError("RESULT_URL_EXPIRED", "This result URL has expired; ask for the job status again")
