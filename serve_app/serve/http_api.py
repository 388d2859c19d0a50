"""The OpenAI-compatible HTTP API as a plain Starlette app over a transcription service.

The app knows nothing about Ray: it talks to a :class:`TranscriptionService` (the
Ingress deployment in production, a fake in unit tests). It owns the HTTP contract:
routes, admission (API key, concurrency, upload size, all before the body is read),
request parsing, rendering, SSE streaming, and OpenAI-shaped errors for everything,
Starlette's own 404/405 included.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.engine.decoder import ChunkResult
from serve_app.engine.errors import InvalidRequestError, ReverbServeError
from serve_app.engine.formats import render
from serve_app.engine.options import DecodeOptions
from serve_app.engine.types import Transcript
from serve_app.serve.config import AppConfig
from serve_app.serve.errors import (
    AuthenticationError,
    ModelNotFoundError,
    error_body,
    error_response,
    http_exception_response,
    internal_error_response,
)
from serve_app.serve.form import parse_transcription_form
from serve_app.serve.limits import ConcurrencyLimiter, Slot, check_content_length, limited_receive
from serve_app.serve.openapi import openapi_schema
from serve_app.serve.pipeline import Plan, text_delta

log = logging.getLogger("ray.serve")

TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
_MAX_FORM_FIELDS = 100


class TranscriptionService(Protocol):
    """What the HTTP layer needs from whoever holds the model handle."""

    config: AppConfig
    api_key: str | None
    limiter: ConcurrencyLimiter
    started_at: int

    async def plan(self, audio: bytes, options: DecodeOptions) -> Plan: ...

    async def complete(self, plan: Plan) -> Transcript: ...

    def results_in_order(self, plan: Plan) -> AsyncIterator[ChunkResult]: ...

    async def readiness(self) -> dict[str, Any]: ...

    def observe(self, route: str, status: int, seconds: float) -> None: ...


def build_http_app(service: TranscriptionService) -> Starlette:
    """The ASGI app one Ingress replica serves."""
    api = _HttpApi(service)
    config = service.config
    middleware = [Middleware(_ObserveMiddleware, service=service)]
    if config.cors_origins:
        # Outside auth, so preflights pass and 401s still carry CORS headers.
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=config.cors_origins,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
                expose_headers=["Retry-After"],
                max_age=600,
            )
        )
    if service.api_key is not None:
        middleware.append(
            Middleware(
                _BearerAuthMiddleware,
                api_key=service.api_key,
                retry_after_s=config.retry_after_s,
            )
        )
    return Starlette(
        routes=[
            Route(TRANSCRIPTIONS_PATH, api.create_transcription, methods=["POST"]),
            Route("/v1/models", api.list_models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", api.retrieve_model, methods=["GET"]),
            Route("/healthz", api.healthz, methods=["GET"]),
            Route("/readyz", api.readyz, methods=["GET"]),
            Route("/openapi.json", api.openapi, methods=["GET"]),
        ],
        middleware=middleware,
        exception_handlers={
            ClientDisconnect: api.on_client_disconnect,
            ReverbServeError: api.on_reverb_error,
            HTTPException: api.on_http_exception,
            Exception: api.on_unexpected_error,
        },
    )


class _HttpApi:
    """Route handlers; one instance per app, closing over the service."""

    def __init__(self, service: TranscriptionService) -> None:
        self.service = service
        self.config = service.config

    # -- transcription ------------------------------------------------------------

    async def create_transcription(self, request: Request) -> Response:
        slot = self.service.limiter.acquire()
        handed_to_stream = False
        form: FormData | None = None
        try:
            check_content_length(request.headers, self.config.max_upload_bytes)
            form = await self._read_form(request)
            parsed = await parse_transcription_form(
                form,
                model_ids=self.config.accepted_model_ids,
                default_model=self.config.served_model_name,
            )
            plan = await self.service.plan(parsed.audio, parsed.options)
            if parsed.stream:
                handed_to_stream = True
                return _SlotStreamingResponse(self._sse_events(plan), slot)
            transcript = await self.service.complete(plan)
            body, media_type = render(
                transcript,
                parsed.response_format,
                audio_name=parsed.filename,
                timestamp_granularities=parsed.timestamp_granularities,
            )
            if isinstance(body, dict):
                return JSONResponse(body, media_type=media_type)
            return Response(body, media_type=media_type)
        finally:
            if not handed_to_stream:
                slot.release()
            if form is not None:
                await form.close()

    async def _read_form(self, request: Request) -> FormData:
        """Parse multipart while counting bytes, so an oversized upload stops early."""
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise InvalidRequestError(
                "Send the request as multipart/form-data with the audio in a 'file' part.",
                param="file",
            )
        limited = Request(
            request.scope, limited_receive(request.receive, self.config.max_upload_bytes)
        )
        return await limited.form(max_files=1, max_fields=_MAX_FORM_FIELDS)

    async def _sse_events(self, plan: Plan) -> AsyncIterator[str]:
        """OpenAI's transcription stream: text deltas in chunk order, then the full text.

        Errors after the 200 has gone out are sent as an ``error`` event, which the
        OpenAI SDK raises as ``APIError``.
        """
        text = ""
        try:
            async for result in self.service.results_in_order(plan):
                delta = text_delta(text, result.text)
                if delta:
                    text += delta
                    yield _sse({"type": "transcript.text.delta", "delta": delta})
            yield _sse({"type": "transcript.text.done", "text": text})
        except ReverbServeError as exc:
            yield _sse(error_body(exc.message, error_type=exc.error_type, code=exc.code))
        except Exception:
            log.exception("transcription stream failed")
            yield _sse(
                error_body(
                    "The server had an error while streaming.",
                    error_type="server_error",
                    code="internal_error",
                )
            )

    # -- models -------------------------------------------------------------------

    def _model_object(self, model_id: str) -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": self.service.started_at,
            "owned_by": "rev",
            "root": self.config.served_model_name,
        }

    async def list_models(self, request: Request) -> Response:
        data = [self._model_object(m) for m in self.config.accepted_model_ids]
        return JSONResponse({"object": "list", "data": data})

    async def retrieve_model(self, request: Request) -> Response:
        model_id = request.path_params["model_id"]
        if model_id not in self.config.accepted_model_ids:
            raise ModelNotFoundError(f"The model {model_id!r} does not exist.", param="model")
        return JSONResponse(self._model_object(model_id))

    # -- health and docs ----------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        info = await self.service.readiness()
        return JSONResponse({"status": "ready", **info})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_schema(self.config))

    # -- errors -------------------------------------------------------------------

    async def on_reverb_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ReverbServeError)
        return error_response(exc, retry_after_s=self.config.retry_after_s)

    async def on_client_disconnect(self, request: Request, exc: Exception) -> Response:
        """The client went away mid-upload: nobody reads this, but it is not our error."""
        return Response(status_code=400)

    async def on_http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return http_exception_response(exc)

    async def on_unexpected_error(self, request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return internal_error_response()


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class _SlotStreamingResponse(StreamingResponse):
    """An SSE response that frees its concurrency slot however the stream ends,
    including a client that disconnects before the first event."""

    def __init__(self, content: AsyncIterator[str], slot: Slot) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slot.release()


def _route_path(scope: Scope) -> str:
    """The path below the app's route prefix (Serve passes the prefix as root_path)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


class _BearerAuthMiddleware:
    """Every /v1 route needs ``Authorization: Bearer <key>``; health and docs stay open."""

    def __init__(self, app: ASGIApp, *, api_key: str, retry_after_s: int) -> None:
        self.app = app
        self._key = api_key.encode()
        self._retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _route_path(scope).startswith("/v1"):
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "OPTIONS" or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        error = AuthenticationError(
            "Missing or incorrect API key: send 'Authorization: Bearer <key>'."
        )
        response = error_response(error, retry_after_s=self._retry_after_s)
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    return hmac.compare_digest(token.strip(), self._key)
        return False


class _ObserveMiddleware:
    """Counts answers by route and status (bounded label set) for Prometheus."""

    _ROUTES = (TRANSCRIPTIONS_PATH, "/v1/models", "/healthz", "/readyz", "/openapi.json")

    def __init__(self, app: ASGIApp, *, service: TranscriptionService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            self.service.observe(self._label(scope), status, time.perf_counter() - started)

    def _label(self, scope: Scope) -> str:
        path = _route_path(scope)
        if path in self._ROUTES:
            return path
        if path.startswith("/v1/models/"):
            return "/v1/models/{id}"
        return "other"
