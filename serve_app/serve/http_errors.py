"""Every error a client sees, in OpenAI's shape: ``{"error": {"message", "type",
"param", "code"}}``, so the official SDKs raise their typed exceptions
(``BadRequestError``, ``AuthenticationError``, ...) with our message.

Our own errors carry their status and code (:mod:`serve_app.wire`); FastAPI's and
Starlette's own answers (unknown route 404, wrong method 405, unparseable multipart
400, body over the limit 413, form validation 422) are rewritten here into the same
envelope, validation failures as a 400 naming the field, as OpenAI answers them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from serve_app.request_options import request_error
from serve_app.serve.config import AppConfig
from serve_app.wire import ReverbServeError, upload_too_large

log = logging.getLogger("ray.serve")

_HTTP_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


ERROR_CODE_STATE_KEY = "error_code"
"""Where an error response leaves its code in the request's scope state, so the edge
can count errors by reason without reading bodies."""


class ErrorResponse(JSONResponse):
    """A JSON error envelope that tells the edge its code as it is sent."""

    def __init__(self, body: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self.error_code: str | None = body["error"]["code"]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope.setdefault("state", {})[ERROR_CODE_STATE_KEY] = self.error_code
        await super().__call__(scope, receive, send)


def error_body(
    message: str, *, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def is_fault(exc: ReverbServeError) -> bool:
    """Our fault (500, 504), worth a log line; a 503 is load shedding, not a fault."""
    return exc.status_code >= 500 and exc.status_code != 503


def client_message(exc: ReverbServeError, request_id: str | None) -> str:
    """What the client reads: the error's own message, plus the request id when the
    fault is ours (the id finds the detail in the logs)."""
    if is_fault(exc) and request_id:
        return f"{exc.message} (request id {request_id})"
    return exc.message


def error_response(
    exc: ReverbServeError, *, retry_after_s: int = 1, request_id: str | None = None
) -> ErrorResponse:
    """The response for one of our typed errors; 503s and 429s tell the client when to
    retry, and server-side errors quote the request id that the logs carry."""
    headers: dict[str, str] = {}
    if exc.status_code in (429, 503):
        headers["Retry-After"] = str(getattr(exc, "retry_after_s", None) or retry_after_s)
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    body = error_body(
        client_message(exc, request_id), error_type=exc.error_type, param=exc.param, code=exc.code
    )
    return ErrorResponse(body, status_code=exc.status_code, headers=headers)


def http_exception_response(exc: HTTPException) -> ErrorResponse:
    """Starlette's and FastAPI's own 4xx (unknown route, bad multipart, 413) reshaped."""
    status = exc.status_code
    error_type = "invalid_request_error" if status < 500 else "server_error"
    body = error_body(str(exc.detail), error_type=error_type, code=_HTTP_CODES.get(status))
    return ErrorResponse(body, status_code=status, headers=dict(exc.headers or {}))


def internal_error_body(request_id: str | None) -> dict[str, Any]:
    """A bug on our side: a fixed message and the request id, never the exception."""
    suffix = f" (request id {request_id})" if request_id else ""
    return error_body(
        f"The server had an error while processing your request{suffix}.",
        error_type="server_error",
        code="internal_error",
    )


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def exception_handlers(config_of: Callable[[Request], AppConfig]) -> dict[Any, Any]:
    """The FastAPI exception handlers that keep every answer in OpenAI's shape;
    ``config_of`` gives the serving app's settings for the request."""

    async def on_reverb_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ReverbServeError)
        if is_fault(exc):
            log.warning("request %s failed: %r", request_id_of(request), exc)
        return error_response(
            exc,
            retry_after_s=config_of(request).retry_after_s,
            request_id=request_id_of(request),
        )

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(request_error(exc.errors()))

    async def on_http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = getattr(exc, "error", None)  # the edge's typed errors (EdgeRejection)
        if isinstance(error, ReverbServeError):
            return error_response(error, retry_after_s=config_of(request).retry_after_s)
        if exc.status_code == 413:  # Starlette's body limit cut the upload off
            return error_response(upload_too_large(config_of(request).max_upload_bytes))
        return http_exception_response(exc)

    async def on_unexpected_error(request: Request, exc: Exception) -> Response:
        request_id = request_id_of(request)
        log.error(
            "request %s: unhandled error on %s %s",
            request_id,
            request.method,
            request.url.path,
            exc_info=exc,
        )
        return ErrorResponse(internal_error_body(request_id), status_code=500)

    return {
        ReverbServeError: on_reverb_error,
        RequestValidationError: on_validation_error,
        HTTPException: on_http_exception,
        Exception: on_unexpected_error,
    }
