"""The web console's page and assets (presentation only), served with a strict Content-Security-Policy.

``GET /`` is ``static/index.html``; its script, style sheet and AudioWorklet module are separate
files under ``/console/`` (no inline script or style, no CDN: the page works offline). The page
talks to the same routes as every other client: ``GET /me``, ``POST /enhance``,
``GET /stat/jobs/<id>``, the signed result URLs, and the ``/live`` WebSocket (:mod:`gateway.live`).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from gateway.live import allowed_origins

__all__ = ["ASSET_HEADERS", "STATIC_DIR", "ConsoleAssets", "content_security_policy", "console_page"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

# For every console response: no MIME sniffing, no framing, no referrer leaking the page's URL.
ASSET_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
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
