"""The gateway's own Prometheus metrics, served on ``/metrics``.

Labels are bounded: the route template (``/stat/jobs/{job_id}``, never the id), the method, the
status code and the contract error code.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["METRICS", "GatewayMetrics", "MetricsMiddleware", "metrics_response"]


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("hushwire_http_requests", "HTTP requests by route, method and status.",
                                ["route", "method", "status"], registry=r)
        self.seconds = Histogram("hushwire_http_request_seconds", "HTTP request time by route.", ["route"],
                                 registry=r)
        self.errors = Counter("hushwire_errors", "HTTP error replies by contract code.", ["code"], registry=r)
        self.websockets_open = Gauge("hushwire_live_websockets_open", "Console live WebSockets open now.",
                                     registry=r)


METRICS = GatewayMetrics()


def metrics_response() -> Response:
    return Response(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts every HTTP request once it is answered, and the open WebSockets."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            METRICS.websockets_open.inc()
            try:
                await self.app(scope, receive, send)
            finally:
                METRICS.websockets_open.dec()
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            METRICS.requests.labels(route, scope.get("method", ""), str(status)).inc()
            METRICS.seconds.labels(route).observe(time.perf_counter() - started)
