"""Logging for every command: ``text`` (human) or ``json`` (one JSON object per line) on stderr.

Events carry structured fields: ``event(log, "stream closed", uid=3, seconds=1.2)`` becomes
``{"msg": "stream closed", "event": "stream closed", "uid": 3, "seconds": 1.2, ...}`` in JSON and
``stream closed uid=3 seconds=1.2`` in text. Fields name the key's owner (uid, key_id), never a key.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["event", "setup_logging"]


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with structured fields."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = _fields(record)
        if fields:
            out["event"] = out["msg"]
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's API)
        text = super().formatMessage(record)
        fields = _fields(record)
        if fields:
            text += " " + " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items())
        return text


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {fmt!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
