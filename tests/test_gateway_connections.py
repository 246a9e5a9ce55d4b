"""The gateway's bound on connections served at once (``hushwire gateway --max-connections``).

Real parts only: a real ``hushwire serve`` and a real ``hushwire gateway --max-connections 3`` in front
of it on loopback ports; held requests are a real upload stalled mid-body and real ``/live``
WebSockets that have not sent their first message.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import ServerProcess, create_key, start_server
from test_gateway import GatewayProcess, start_gateway
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from hushwire.contract.errors import RETRY_AFTER_SECONDS

LIMIT = 3
WAIT_S = 10.0


@pytest.fixture(scope="module")
def hw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("conns"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def gateway(hw_server: ServerProcess) -> Iterator[GatewayProcess]:
    gw = start_gateway(hw_server.data_dir, hw_server.target, "--max-connections", str(LIMIT))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def key(hw_server: ServerProcess) -> str:
    return create_key(hw_server.data_dir, "--name", "conns")


def open_live(gateway: GatewayProcess) -> ClientConnection:
    return connect(gateway.url.replace("http://", "ws://", 1) + "/live", open_timeout=10)


def stalled_upload(gateway: GatewayProcess, key: str) -> socket.socket:
    """A ``POST /enhance`` whose body stops after its first bytes: a request in flight until closed."""
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    part = (b'--B\r\nContent-Disposition: form-data; name="f"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\nRIFF")
    sock.sendall(b"POST /enhance HTTP/1.1\r\nHost: gw\r\nAuthorization: " + key.encode() + b"\r\n"
                 b"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 100000\r\n\r\n" + part)
    return sock


def wait_for_status(http: httpx.Client, status: int) -> httpx.Response:
    """GET /readyz until it answers ``status`` (a freed or taken slot shows after the other side's close)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        resp = http.get("/readyz")
        if resp.status_code == status or time.monotonic() > deadline:
            return resp
        time.sleep(0.05)


def test_requests_and_live_streams_past_the_limit_are_refused_until_one_ends(
        gateway: GatewayProcess, key: str) -> None:
    with contextlib.ExitStack() as held:
        # Idle keep-alive connections, as many as the limit: they do not count.
        for _ in range(LIMIT):
            idle = held.enter_context(httpx.Client(base_url=gateway.url, trust_env=False, timeout=10))
            assert idle.get("/readyz").status_code == 200
        # Busy ones, up to the limit: an upload in flight and two open WebSockets.
        held.callback(stalled_upload(gateway, key).close)
        lives = [held.enter_context(open_live(gateway)) for _ in range(LIMIT - 1)]

        with httpx.Client(base_url=gateway.url, trust_env=False, timeout=10) as http:
            refused = wait_for_status(http, 503)
            assert refused.status_code == 503, refused.text
            assert refused.json() == {"error": {"code": "OVERLOADED", "msg": refused.json()["error"]["msg"]}}
            assert "--max-connections" in refused.json()["error"]["msg"]
            assert refused.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
            assert refused.headers["connection"] == "close"
            assert http.get("/healthz").status_code == 200   # liveness answers however busy

            # A /live WebSocket past the limit: refused as a full server refuses it.
            with open_live(gateway) as extra:
                message = json.loads(extra.recv(timeout=WAIT_S))
                assert message["error"]["code"] == "OVERLOADED"
                with pytest.raises(ConnectionClosed) as closed:
                    extra.recv(timeout=WAIT_S)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013

            lives[0].close()
            assert wait_for_status(http, 200).status_code == 200
            # The freed slot is taken by a new stream: full again.
            held.enter_context(open_live(gateway))
            assert wait_for_status(http, 503).status_code == 503
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=10) as http:
        assert wait_for_status(http, 200).status_code == 200
