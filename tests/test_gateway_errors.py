"""The gateway's error mapping (one function from gRPC to HTTP) and its catch-all for bugs.

The end-to-end refusals are in test_gateway.py; these cover the cases a live server does not
produce on demand (a deadline, a proxy's error without a trailer, a bug in the gateway itself).
"""

from __future__ import annotations

import asyncio
import logging
import re

import grpc
import httpx
import pytest

import gateway
from gateway.config import GatewayConfig
from gateway.errors import GatewayError, from_rpc_error
from hushwire.contract.errors import ERRORS
from hushwire.contract.metadata import ERROR_CODE_KEY


def _rpc_error(status: grpc.StatusCode, details: str, code: str | None = None) -> grpc.aio.AioRpcError:
    trailers = grpc.aio.Metadata((ERROR_CODE_KEY, code)) if code else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(status, grpc.aio.Metadata(), trailers, details=details)


@pytest.mark.parametrize("code", sorted(c for c, spec in ERRORS.items() if c != "SLOW_CONSUMER"))
def test_a_trailer_code_maps_through_the_one_table(code: str) -> None:
    err = from_rpc_error(_rpc_error(ERRORS[code].grpc_status, "the server's words", code))
    assert (err.status, err.code, err.msg) == (ERRORS[code].http_status, code, "the server's words")


def test_the_trailer_wins_over_the_status() -> None:
    # Draining servers answer UNAVAILABLE with a trailer; a rate limit shares RESOURCE_EXHAUSTED with size.
    err = from_rpc_error(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", "RATE_LIMITED"))
    assert (err.status, err.code) == (429, "RATE_LIMITED")
    err = from_rpc_error(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "too big", "FILE_TOO_LARGE"))
    assert (err.status, err.code) == (413, "FILE_TOO_LARGE")


@pytest.mark.parametrize(("status", "http_status", "code"), [
    (grpc.StatusCode.UNAVAILABLE, 503, "SERVICE_UNAVAILABLE"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "UPSTREAM_TIMEOUT"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 502, "UPSTREAM_ERROR"),   # e.g. grpc's own message size limit
    (grpc.StatusCode.INTERNAL, 502, "UPSTREAM_ERROR"),
    (grpc.StatusCode.UNIMPLEMENTED, 502, "UPSTREAM_ERROR"),
    (grpc.StatusCode.NOT_FOUND, 502, "UPSTREAM_ERROR"),            # without a trailer it is not the server's
])
def test_no_trailer_maps_by_status(status: grpc.StatusCode, http_status: int, code: str) -> None:
    err = from_rpc_error(_rpc_error(status, "proxy said no"))
    assert (err.status, err.code) == (http_status, code)


def test_gateway_error_shape() -> None:
    resp = GatewayError("INVALID_REQUEST", "wrong type", 415).response()
    assert resp.status_code == 415
    assert resp.body == b'{"error":{"code":"INVALID_REQUEST","msg":"wrong type"}}'
    assert GatewayError("INVALID_FILE").msg == "Invalid file type from input"


def test_an_unexpected_exception_is_500_with_a_logged_id(caplog: pytest.LogCaptureFixture) -> None:
    app = gateway.create_app(GatewayConfig(gateway_port=8080))

    async def boom() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/boom", boom, methods=["GET"])

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.get("/boom")

    with caplog.at_level(logging.ERROR, logger="hushwire.gateway"):
        resp = asyncio.run(call())
    assert resp.status_code == 500
    body = resp.json()
    assert body["error"]["code"] == "INTERNAL"
    assert "secret internals" not in resp.text and "Traceback" not in resp.text
    m = re.search(r"id ([0-9a-f]{12})", body["error"]["msg"])
    assert m, body
    assert any(m.group(1) in r.getMessage() and r.exc_info for r in caplog.records)


def test_exported_members() -> None:
    assert sorted(gateway.__all__) == ["create_app", "run"]
    for name in gateway.__all__:
        assert callable(getattr(gateway, name))
