"""The checks every request passes before FastAPI reads a byte of its body.

An upload can be 100 MB; refusing it after reading it wastes the replica's memory
and the client's time. So one ASGI middleware, ahead of routing and body parsing:

1. gives the request an id (Ray's proxy's ``x-request-id`` when it is a plain token,
   else a new one) that 500s quote and the logs carry, and counts the answer by route
   and status for Prometheus (every request);
2. applies CORS for the configured browser origins;
3. refuses requests that carry a header Ray Serve's proxy gives meaning to (a client
   must not set the server's timeout, switch off disconnect handling or steer routing);
4. checks the bearer key on every route but the health probes;
5. holds each client to ``max_requests_per_client`` transcriptions at once (429);
6. takes a transcription's body in: checks its content type and Content-Length, bounds
   how many bodies arrive at once (503 + Retry-After), cuts bodies that arrive too
   slowly (408), and caps the body as it streams in (Starlette's
   ``RequestBodyLimitMiddleware``: chunked uploads carry no length and clients lie).

The pipeline's admission (how many transcriptions decode, wait and run at once) is
taken by the route after the body is in, so slow uploads cannot hold it; but a request
the pipeline would refuse right now is refused before its body is read. Settings come from
the replica's config, so the layers are built on the first request of each app (one
app per replica).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.serve.client_limit import PerClientLimit
from serve_app.serve.http_errors import ERROR_CODE_STATE_KEY, error_response
from serve_app.serve.metrics import CLIENT_CLOSED_REQUEST
from serve_app.serve.web_routes import is_page_path
from serve_app.wire import (
    AuthenticationError,
    BodyTimeoutError,
    InvalidRequestError,
    OverloadedError,
    ReservedHeaderError,
    ReverbServeError,
    upload_too_large,
)

if TYPE_CHECKING:
    from serve_app.serve.http_api import HttpBackend

TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
"""Routes an orchestrator probes without credentials; every other route needs the key,
except the browser page (see :func:`is_open_path`)."""


def is_open_path(path: str) -> bool:
    """Routes served without the API key: the health probes and the browser page, which
    holds no secret (the key the user types goes only on the page's own API calls)."""
    return path in OPEN_PATHS or is_page_path(path)


REQUEST_ID_STATE_KEY = "request_id"
REQUEST_STARTED_STATE_KEY = "started_at"
"""``time.perf_counter()`` when the edge received the request."""
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
RAY_CONTROL_HEADERS = frozenset(
    {
        "x-request-timeout-seconds",  # <= 0 disables the proxy's timeout
        "x-request-disconnect-disabled",  # "?1": work goes on after the client leaves
        "x-session-id",  # session affinity in Serve's request routers
        "serve-multiplexed-model-id",  # routes to the replica holding that model id
    }
)
"""Headers the pinned Ray's proxy or replica act on (``ray/serve/_private/constants.py``),
as ``_header_key`` spells them; ``x-serve-router-*`` (HAProxy's routing hints) too."""
RAY_CONTROL_HEADER_PREFIX = "x-serve-router-"


class EdgeMiddleware:
    """Observe -> CORS -> Ray headers -> auth -> per-client limit -> intake -> body
    limit -> the FastAPI router."""

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
        state = scope.setdefault("state", {})
        state[REQUEST_ID_STATE_KEY] = _request_id(scope)
        started = time.perf_counter()
        state[REQUEST_STARTED_STATE_KEY] = started
        status: int | None = None

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._layers(scope, receive, send_observed)
        except asyncio.CancelledError:
            # Serve cancels a request whose client hung up: counted as nginx's 499
            # ("client closed request"), not as a 500 the server never sent.
            status = status or CLIENT_CLOSED_REQUEST
            raise
        finally:
            status = status or 500
            code = state.get(ERROR_CODE_STATE_KEY)
            backend.observe(route_label(scope), status, time.perf_counter() - started, code)

    def _build(self, backend: HttpBackend) -> ASGIApp:
        config = backend.config
        inner: ASGIApp = _Intake(
            RequestBodyLimitMiddleware(self.app, max_body_size=config.max_upload_bytes),
            backend=backend,
        )
        if config.max_requests_per_client is not None:
            inner = PerClientLimit(
                inner,
                limit=config.max_requests_per_client,
                id_header=config.client_id_header,
                retry_after_s=config.retry_after_s,
                counts=_is_transcription,
            )
        if backend.api_key is not None:
            inner = _BearerAuth(inner, api_key=backend.api_key)
        inner = _RefuseRayControlHeaders(inner)
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


def _is_transcription(scope: Scope) -> bool:
    return scope.get("method") == "POST" and route_path(scope) == TRANSCRIPTIONS_PATH


def route_label(scope: Scope) -> str:
    """The matched route's template (a bounded label set), or ``other``."""
    route = scope.get("route")
    return getattr(route, "path", None) or "other"


def _header_key(name: bytes) -> str:
    """Ray matches some of its headers with ``-`` and ``_`` as one; so does this."""
    return name.decode("latin-1").lower().replace("_", "-")


class _RefuseRayControlHeaders:
    """400 for any request that carries a Ray control header, before auth and body.

    Ray's proxy has acted on the header by the time the app sees the request, and no
    documented Ray API strips it earlier; refusing it here means such a request does no
    work at all, so it cannot outlive the server's timeout or keep running after its
    client has gone. A tiny timeout only ends the sender's own request sooner.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, _ in scope.get("headers", []):
            key = _header_key(name)
            if key in RAY_CONTROL_HEADERS or key.startswith(RAY_CONTROL_HEADER_PREFIX):
                error = ReservedHeaderError(
                    f"The header '{key}' is reserved for the server; remove it.", param=key
                )
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
            is_open_path(route_path(scope))
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


class _Intake:
    """Transcription bodies: multipart, within the declared-size limit, at most
    ``max_concurrent_uploads`` arriving at once, each cut with 408 when it arrives
    slower than ``min_body_bytes_per_s`` after ``body_grace_s``.

    An upload holds only an intake place, released as soon as its body is complete:
    the pipeline's admission is taken by the route once the form is parsed, so
    clients trickling bytes cannot hold the slots that decoding and the model need.
    """

    def __init__(self, app: ASGIApp, *, backend: HttpBackend) -> None:
        self.app = app
        self._backend = backend
        self._uploads = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_transcription(scope):
            await self.app(scope, receive, send)
            return
        config = self._backend.config
        try:
            _check_body_headers(scope, config.max_upload_bytes)
            if self._uploads >= config.max_concurrent_uploads:
                raise OverloadedError(
                    f"The server is receiving {self._uploads} uploads, its limit; retry shortly."
                )
            # Shed before reading a body the pipeline would refuse anyway.
            self._backend.pipeline.check_room(arriving=self._uploads)
        except ReverbServeError as exc:
            await error_response(exc, retry_after_s=config.retry_after_s)(scope, receive, send)
            return
        self._uploads += 1
        paced = _PacedBody(
            receive, grace_s=config.body_grace_s, min_rate=config.min_body_bytes_per_s
        )
        paced.on_complete = self._release
        try:
            await self.app(scope, paced, send)
        finally:
            paced.complete()

    def _release(self) -> None:
        self._uploads -= 1


class EdgeRejection(HTTPException):
    """One of our typed errors raised from inside ``receive`` while FastAPI parses the
    body: FastAPI passes HTTP exceptions through to the handlers (any other exception
    would become its generic 400), and the handler renders ``error``."""

    def __init__(self, error: ReverbServeError) -> None:
        super().__init__(status_code=error.status_code, detail=error.message)
        self.error = error


class _PacedBody:
    """``receive`` for a request body that must keep arriving: after ``grace_s``, at
    least ``min_rate`` bytes per second on average since the start, else 408. Once the
    body is complete, messages pass unpaced (a response may wait for a disconnect)."""

    def __init__(self, receive: Receive, *, grace_s: float, min_rate: int) -> None:
        self._receive = receive
        self._grace_s = grace_s
        self._min_rate = min_rate
        self._started = time.monotonic()
        self._received = 0
        self._done = False
        self.on_complete: Callable[[], None] | None = None

    def complete(self) -> None:
        """The body is in (or the request ended): call ``on_complete`` once."""
        if not self._done:
            self._done = True
            if self.on_complete is not None:
                self.on_complete()

    async def __call__(self) -> Message:
        if self._done:
            return await self._receive()
        allowed_until = self._started + self._grace_s + self._received / self._min_rate
        try:
            async with asyncio.timeout(max(allowed_until - time.monotonic(), 0.0)):
                message = await self._receive()
        except TimeoutError:
            self.complete()
            raise EdgeRejection(
                BodyTimeoutError(
                    f"The request body arrived slower than {self._min_rate} bytes/s; "
                    "the server stopped waiting."
                )
            ) from None
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.complete()
        else:  # http.disconnect: the client is gone
            self.complete()
        return message


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
