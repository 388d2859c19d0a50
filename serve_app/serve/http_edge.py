"""The checks every request passes before FastAPI reads a byte of its body.

An upload can be 100 MB; refusing it after reading it wastes the replica's memory
and the client's time. So one ASGI middleware, ahead of routing and body parsing:

1. gives the request an id (Ray's proxy's ``x-request-id`` when it is a plain token,
   else a new one) that 500s quote and the logs carry, and counts the answer by route
   and status for Prometheus (every request);
2. applies CORS for the configured browser origins;
3. checks the bearer key on every route but the health probes;
4. admits a transcription into the pipeline (503 + Retry-After when full), checks its
   content type and Content-Length, and caps the body as it streams in (Starlette's
   ``RequestBodyLimitMiddleware``: chunked uploads carry no length and clients lie).

The admission stays held until the response has been sent in full, SSE streams
included, however the request ends. Settings come from the replica's config, so the
layers are built on the first request of each app (one app per replica).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.serve.http_errors import error_response
from serve_app.wire import (
    AuthenticationError,
    InvalidRequestError,
    ReverbServeError,
    upload_too_large,
)

if TYPE_CHECKING:
    from serve_app.serve.http_api import HttpBackend

TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
"""Routes an orchestrator probes without credentials; every other route needs the key."""
ADMISSION_STATE_KEY = "admission"
"""Where the admitted request's ``Admission`` waits for the route (``request.state``)."""
REQUEST_ID_STATE_KEY = "request_id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class EdgeMiddleware:
    """Observe -> CORS -> auth -> admission -> body limit -> the FastAPI router."""

    def __init__(self, app: ASGIApp, *, backend: Callable[[], HttpBackend]) -> None:
        self.app = app
        self._backend = backend
        self._layers: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        backend = self._backend()
        if self._layers is None:
            self._layers = self._build(backend)
        scope.setdefault("state", {})[REQUEST_ID_STATE_KEY] = _request_id(scope)
        started = time.perf_counter()
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._layers(scope, receive, send_observed)
        finally:
            backend.observe(route_label(scope), status, time.perf_counter() - started)

    def _build(self, backend: HttpBackend) -> ASGIApp:
        config = backend.config
        inner: ASGIApp = _Admit(
            RequestBodyLimitMiddleware(self.app, max_body_size=config.max_upload_bytes),
            backend=backend,
        )
        if backend.api_key is not None:
            inner = _BearerAuth(inner, api_key=backend.api_key)
        if config.cors_origins:
            # Outside auth, so preflights pass and 401s still carry CORS headers.
            inner = CORSMiddleware(
                inner,
                allow_origins=config.cors_origins,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
                expose_headers=["Retry-After"],
                max_age=600,
            )
        return inner


def _request_id(scope: Scope) -> str:
    """Ray's proxy puts its request id (the client's ``x-request-id``, or a new one) in
    the request headers; use it when it is a plain token, so a 500's id finds Ray's log
    lines too, and never echo a client's arbitrary text into logs."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


def route_path(scope: Scope) -> str:
    """The path below the app's route prefix (Serve passes the prefix as root_path)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


def route_label(scope: Scope) -> str:
    """The matched route's template (a bounded label set), or ``other``."""
    route = scope.get("route")
    return getattr(route, "path", None) or "other"


class _BearerAuth:
    """Every route but the health probes needs ``Authorization: Bearer <key>``;
    CORS preflights pass (browsers send them without credentials).

    Keys are compared as SHA-256 digests in constant time, so neither the comparison's
    time nor an early length mismatch tells a caller anything about the key.
    """

    def __init__(self, app: ASGIApp, *, api_key: str) -> None:
        self.app = app
        self._digest = hashlib.sha256(api_key.encode()).digest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            route_path(scope) in OPEN_PATHS
            or scope.get("method") == "OPTIONS"
            or self._authorized(scope)
        ):
            await self.app(scope, receive, send)
            return
        error = AuthenticationError(
            "Missing or incorrect API key: send 'Authorization: Bearer <key>'."
        )
        await error_response(error)(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                digest = hashlib.sha256(token.strip()).digest()
                return scheme.lower() == b"bearer" and hmac.compare_digest(digest, self._digest)
        return False


class _Admit:
    """Admits transcriptions before their body is read and holds the admission until
    the response is complete; other routes pass straight through."""

    def __init__(self, app: ASGIApp, *, backend: HttpBackend) -> None:
        self.app = app
        self._backend = backend

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST" or route_path(scope) != TRANSCRIPTIONS_PATH:
            await self.app(scope, receive, send)
            return
        retry_after_s = self._backend.config.retry_after_s
        try:
            _check_body_headers(scope, self._backend.config.max_upload_bytes)
            admission = self._backend.pipeline.admit()
        except ReverbServeError as exc:
            await error_response(exc, retry_after_s=retry_after_s)(scope, receive, send)
            return
        scope.setdefault("state", {})[ADMISSION_STATE_KEY] = admission
        try:
            await self.app(scope, receive, send)
        finally:
            admission.release()


def _check_body_headers(scope: Scope, limit: int) -> None:
    """A transcription is multipart and, when it declares its size, within the limit."""
    headers = {name: value for name, value in scope.get("headers", [])}
    content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequestError(
            "Send the request as multipart/form-data with the audio in a 'file' part.",
            param="file",
        )
    declared = headers.get(b"content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise InvalidRequestError(f"Invalid Content-Length header {declared!r}.") from None
    if size > limit:
        raise upload_too_large(limit)
