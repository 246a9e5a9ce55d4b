"""Signed job webhooks as a receiver sees them: the headers and how the signature is made.

The server signs each delivery (``server/webhooks.py``) and the gateway's OpenAPI document tells
receivers how to check it, both from here. Pure Python.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["EVENT_ID_HEADER", "SIGNATURE_HEADER", "signature_header"]

SIGNATURE_HEADER = "Hushwire-Signature"   # t=<unix seconds>,v1=<hex>[,v1=<hex>]
EVENT_ID_HEADER = "Hushwire-Event-Id"     # the same at every attempt of one delivery: receivers deduplicate on it


def signature_header(secrets_: Sequence[str], body: bytes, t: int) -> str:
    """``t=<t>,v1=<hex>[,v1=<hex>]``: HMAC-SHA256 of ``b"<t>." + body`` keyed with each secret's UTF-8 bytes."""
    signed = f"{t}.".encode() + body
    return ",".join([f"t={t}", *(f"v1={hmac.new(s.encode(), signed, hashlib.sha256).hexdigest()}"
                                 for s in secrets_)])
