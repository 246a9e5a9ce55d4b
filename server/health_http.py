"""The server's health, in one place: grpc.health.v1 for every service name, and a plain-HTTP mirror.

HAProxy 2.6 cannot parse grpc.health.v1 answers, so a replica behind it also serves its readiness
over plain HTTP (``--health-http-port``) for ``option httpchk``:

- ``GET /readyz`` (or ``HEAD``): 200 ``SERVING`` while the server is SERVING; 503 ``NOT_SERVING``
  while it starts its job workers and from the moment a drain begins (SIGTERM), so the balancer
  stops sending it new streams before it refuses them;
- ``GET /healthz``: 200 while the process runs (liveness);
- anything else: 404.

Both answers come from the same :class:`Health` object, so the mirror cannot disagree with the gRPC
health service. The mirror runs in the server's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2

from server.config import ConfigError

__all__ = ["Health", "HealthMirror", "bind"]

log = logging.getLogger("hushwire.server")

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    """Sets every gRPC health service name at once and remembers the status for the HTTP mirror."""

    def __init__(self, servicer: health.aio.HealthServicer, names: Sequence[str]) -> None:
        self.servicer = servicer
        self.names = tuple(names)
        self.serving = False

    async def set(self, serving: bool) -> None:
        self.serving = serving
        for name in self.names:
            await self.servicer.set(name, _SERVING if serving else _NOT_SERVING)


def bind(host: str, port: int) -> socket.socket:
    """The mirror's listening socket, bound before anything else starts, so a busy port is a clear
    configuration error (exit status 2) rather than a half-started server."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigError(f"--health-http-port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
REQUEST_TIMEOUT_S = 5.0      # a checker that sends nothing for this long is dropped
MAX_HEAD_BYTES = 8192        # request line and headers; anything longer is not a health check


class HealthMirror:
    """A tiny HTTP/1.x responder for ``/readyz`` and ``/healthz``, one request per connection.

    Why not uvicorn (already a dependency): HAProxy's checks half-close the connection right after
    the request, and uvicorn's h11 protocol then drops the answer (HAProxy logs "Socket error" and
    marks the replica DOWN). A health check needs only the request line, so a few lines of asyncio do.
    """

    def __init__(self, health_state: Health, sock: socket.socket) -> None:
        self._health = health_state
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        self._server: asyncio.Server | None = None

    def _answer(self, head: bytes) -> tuple[int, bytes, bool]:
        """(status, body, is HEAD) for one request head."""
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, b"bad request\n", False
        method, path = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, b"method not allowed\n", False
        if path == "/readyz":
            serving = self._health.serving
            return (200, b"SERVING\n", method == "HEAD") if serving else (503, b"NOT_SERVING\n", method == "HEAD")
        if path == "/healthz":
            return 200, b"alive\n", method == "HEAD"
        return 404, b"not found: try /readyz or /healthz\n", method == "HEAD"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            except asyncio.LimitOverrunError:
                head = b""
            status, body, is_head = self._answer(head)
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
                + (b"" if is_head else body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # a checker that went away, or sent nothing
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, sock=self._sock, limit=MAX_HEAD_BYTES)
        host, port = self._sock.getsockname()[:2]
        log.info("health mirror on http://%s:%d/readyz", f"[{host}]" if ":" in host else host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
