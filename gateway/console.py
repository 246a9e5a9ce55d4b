"""The web console's page and assets (presentation only), served with a strict Content-Security-Policy.

``GET /`` is ``static/index.html``; its script, style sheet and AudioWorklet module are separate
files under ``/console/`` (no inline script or style, no CDN: the page works offline). The page
talks to the same routes as every other client: ``GET /me``, ``POST /enhance``,
``GET /stat/jobs/<id>``, the signed result URLs, and the ``/live`` WebSocket (:mod:`gateway.live`).
The stream's limits (rates, channels, the attenuation limit's range) come from ``GET
/console/limits.json``, which serves the contract's values (:mod:`hushwire.contract.limits`), so the
page copies none of them.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from gateway.live import allowed_origins
from hushwire.contract.limits import MAX_CHANNELS, MAX_CHUNK_SECONDS, MIN_ATTENUATION_LIMIT_DB, SUPPORTED_RATES
from hushwire.contract.pcm import ENCODINGS

__all__ = ["ASSET_HEADERS", "LIMITS", "STATIC_DIR", "ConsoleAssets", "console_limits", "console_page",
           "content_security_policy"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

# For every console response: no MIME sniffing, no framing, no referrer leaking the page's URL.
ASSET_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


# What the page needs to know of the live stream's contract (``GET /console/limits.json``).
LIMITS: dict[str, object] = {
    "sample_rates_hz": list(SUPPORTED_RATES),
    "max_channels": MAX_CHANNELS,
    "encodings": sorted(ENCODINGS),
    "max_chunk_seconds": MAX_CHUNK_SECONDS,
    "min_attenuation_limit_db": MIN_ATTENUATION_LIMIT_DB,
}


def _ws_origin(origin: str) -> str:
    return ("wss" if origin.startswith("https:") else "ws") + origin[origin.index(":"):]


def content_security_policy(public_url: str, host_header: str | None, secure: bool) -> str:
    """No inline code; scripts, styles and the AudioWorklet module from the page's own origin; the
    WebSocket and fetches to the gateway (its own origin and its public URL, where signed result
    URLs point); recordings and players from ``blob:`` URLs the page makes."""
    origins = sorted(allowed_origins(public_url, host_header, secure))
    own = " ".join(origins)
    sockets = " ".join(_ws_origin(o) for o in origins)
    return "; ".join([
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        f"media-src 'self' blob: {own}",
        f"connect-src 'self' {sockets} {own}",
        "worker-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])


def console_page(request: Request, public_url: str) -> Response:
    """The console's HTML with its Content-Security-Policy."""
    csp = content_security_policy(public_url, request.headers.get("host"), request.url.scheme == "https")
    headers = {**ASSET_HEADERS, "Content-Security-Policy": csp, "X-Frame-Options": "DENY"}
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=headers)


def console_limits() -> Response:
    """The live stream's limits for the page, from the contract."""
    return JSONResponse(LIMITS, headers=ASSET_HEADERS)


class ConsoleAssets:
    """The page's static files (JS, CSS), with :data:`ASSET_HEADERS` added to every reply."""

    def __init__(self) -> None:
        self._files = StaticFiles(directory=STATIC_DIR)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in ASSET_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self._files(scope, receive, send_with_headers)
