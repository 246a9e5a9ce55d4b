"""The server's health, in one place: grpc.health.v1 for every service name, and a plain-HTTP mirror.

HAProxy 2.6 cannot parse grpc.health.v1 answers, so a replica behind it also serves its readiness
over plain HTTP (``--health-http-port``) for ``option httpchk``:

- ``GET /readyz`` (or ``HEAD``): 200 ``SERVING`` while the server is SERVING; 503 ``NOT_SERVING``
  while it starts its job workers and from the moment a drain begins (SIGTERM), so the balancer
  stops sending it new streams before it refuses them;
- ``GET /readyz/live``: the same for new live streams (health ``hushwire.v1.Enhancer``): also 503
  while admission control finds the server full (server/admission.py), so a balancer sends new
  ``/hushwire.v1.Enhancer/`` calls elsewhere while jobs still come here;
- ``GET /healthz``: 200 while the process runs (liveness);
- with ``serve --processes N`` the parent answers for the group (server/group.py): ready while at
  least one sibling serves (not only while all do), and the body's next lines give each sibling's
  state;
- anything else: 404.

Both answers come from the same :class:`Health` object, so the mirror cannot disagree with the gRPC
health service. The mirror runs on uvicorn (already a dependency, for the gateway) in the server's
own event loop, without uvicorn's signal handling, which stays with ``serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import uvicorn
from grpc_health.v1 import health, health_pb2

from hushwire.settings import bind_tcp
from server.shared import DRAINING, SERVING, STARTING, SharedState

__all__ = ["Health", "HealthMirror", "HealthView", "bind"]

log = logging.getLogger("hushwire.server")

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")]


class Health:
    """Sets the gRPC health service names and remembers the status for the HTTP mirror.

    ``serving`` is the whole server's (every name); ``live_full`` (admission control, see
    server/admission.py) turns only ``live_name`` NOT_SERVING while the server is up. A sibling of
    ``serve --processes N`` (``shared``, server/shared.py) publishes its state for the group, and its
    ``live_name`` answers for the group: NOT_SERVING while every sibling is full.
    """

    def __init__(self, servicer: health.aio.HealthServicer, names: Sequence[str], live_name: str | None = None,
                 shared: SharedState | None = None) -> None:
        self.servicer = servicer
        self.names = tuple(names)
        self.live_name = live_name
        self.serving = False
        self.live_full = False
        self.shared = shared
        self._served = False
        self._published: dict[str, bool] = {}

    @property
    def live_serving(self) -> bool:
        full = self.shared.group_full() if self.shared is not None else self.live_full
        return self.serving and not full

    async def set(self, serving: bool) -> None:
        self.serving = serving
        self._served = self._served or serving
        if self.shared is not None:
            self.shared.set_state(SERVING if serving else DRAINING if self._served else STARTING, os.getpid())
        await self._publish()

    async def set_live_full(self, full: bool) -> None:
        self.live_full = full
        if self.shared is not None:
            self.shared.set_full(full)
        await self._publish()

    def describe(self) -> str:
        return ""   # one process: the status line says it all

    async def refresh(self) -> None:
        """Publish what changed in the group (siblings call this a few times a second)."""
        await self._publish()

    async def _publish(self) -> None:
        for name in self.names:
            up = self.live_serving if name == self.live_name else self.serving
            if self._published.get(name) != up:
                self._published[name] = up
                await self.servicer.set(name, _SERVING if up else _NOT_SERVING)


class HealthView(Protocol):
    """What the HTTP mirror reads: a :class:`Health`, or the parent's view of a group of siblings."""

    @property
    def serving(self) -> bool: ...

    @property
    def live_serving(self) -> bool: ...

    def describe(self) -> str:
        """Lines the mirror's answers carry after the status (a group's per-process states; or none)."""
        ...


def bind(host: str, port: int) -> socket.socket:
    """The mirror's listening socket, bound before anything else starts, so a busy port is a clear
    configuration error (exit status 2) rather than a half-started server."""
    return bind_tcp(host, port, "--health-http-port: ")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # SIGTERM belongs to ``serve``: it drains, and the mirror reports it


class HealthMirror:
    """A tiny ASGI app on uvicorn answering ``/readyz`` and ``/healthz`` from a :class:`Health`."""

    def __init__(self, health_state: HealthView, sock: socket.socket) -> None:
        self._health = health_state
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        config = uvicorn.Config(self._app, lifespan="off", log_config=None, log_level="warning", access_log=False,
                                server_header=False, date_header=False, http="h11",
                                interface="asgi3", proxy_headers=False)
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            status, body = 405, b"method not allowed\n"
        elif scope["path"] in ("/readyz", "/readyz/live"):
            up = self._health.serving if scope["path"] == "/readyz" else self._health.live_serving
            status = 200 if up else 503
            body = (b"SERVING\n" if up else b"NOT_SERVING\n") + self._health.describe().encode()
        elif scope["path"] == "/healthz":
            status, body = 200, b"alive\n"
        else:
            status, body = 404, b"not found: try /readyz, /readyz/live or /healthz\n"
        headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():  # it could not start: say why
                await self._task
                raise RuntimeError("the health mirror did not start")
            await asyncio.sleep(0.01)
        host, port = self._sock.getsockname()[:2]
        log.info("health mirror on http://%s:%d/readyz", f"[{host}]" if ":" in host else host, port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, 5.0)
        self._sock.close()
