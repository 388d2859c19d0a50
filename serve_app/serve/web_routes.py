"""The browser page's routes: ``GET /`` (index.html) and its assets under ``/ui/``.

They are open (no API key): the page holds no secret, and the key the user types is
sent only by the page's own API calls. Every answer carries a Content-Security-Policy
that lets the page run only its own scripts; ``connect-src`` stays open because the
page may be pointed at another reverb-serve (whose CORS allowlist then decides).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.web import WEB_DIR

PAGE_PATH = "/"
ASSETS_PREFIX = "/ui"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "media-src 'self' blob:",
        "connect-src 'self' http: https: ws: wss:",
        "worker-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
_SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def is_page_path(path: str) -> bool:
    """The page and its assets: open routes, like the health probes."""
    return path == PAGE_PATH or path.startswith(ASSETS_PREFIX + "/")


class _WithSecurityHeaders:
    """Adds the page's security headers to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def add_web_routes(app: FastAPI) -> None:
    """Serve the page at ``/`` and its files under ``/ui/`` (starlette's StaticFiles:
    ETags, conditional requests, no path escapes)."""
    index = WEB_DIR / "index.html"

    @app.api_route(PAGE_PATH, methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        # Under a route prefix, "/prefix" gets Starlette's redirect to "/prefix/", the
        # URL the page's relative links need.
        return FileResponse(
            index,
            media_type="text/html; charset=utf-8",
            headers={k.decode(): v.decode() for k, v in _SECURITY_HEADERS},
        )

    assets = StaticFiles(directory=WEB_DIR / "ui")
    app.mount(ASSETS_PREFIX, _WithSecurityHeaders(assets), name="ui")
