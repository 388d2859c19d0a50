"""Errors the Serve layer adds to the engine's, and their OpenAI-shaped JSON.

Every error a client sees has OpenAI's body ``{"error": {"message", "type", "param",
"code"}}`` so that the official SDKs raise their typed exceptions (``BadRequestError``,
``AuthenticationError``, ...) with our message. The status and code come from the
exception itself (the engine's errors carry them), so there is no lookup table to
fall out of date.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from serve_app.engine.errors import InvalidRequestError, ReverbServeError


class MissingParameterError(InvalidRequestError):
    """A required form field (``file``) was not sent."""

    code = "missing_required_parameter"


class AuthenticationError(ReverbServeError):
    """No or a wrong bearer key on a /v1 route."""

    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class NotFoundError(ReverbServeError):
    """An unknown model id or route."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    """``GET /v1/models/{id}`` for an id this app does not serve."""

    code = "model_not_found"


class UnavailableError(ReverbServeError):
    """The model replicas cannot take work right now (starting, restarting, gone)."""

    status_code = 503
    error_type = "server_error"
    code = "model_unavailable"


class ChunkDecodeError(ReverbServeError):
    """The model failed on audio that decoded fine: our fault, so a 500.

    The Transcriber turns arbitrary engine exceptions into this so that what crosses
    the Ray handle always unpickles and always has a status.
    """

    status_code = 500
    error_type = "server_error"
    code = "decode_failed"


_HTTP_TYPES = {401: "invalid_request_error", 404: "invalid_request_error"}
_HTTP_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def error_body(
    message: str, *, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(exc: ReverbServeError, *, retry_after_s: int = 1) -> JSONResponse:
    """The HTTP response for one of our typed errors; 503s tell the client when to retry."""
    headers: dict[str, str] = {}
    if exc.status_code == 503:
        headers["Retry-After"] = str(retry_after_s)
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    body = error_body(exc.message, error_type=exc.error_type, param=exc.param, code=exc.code)
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def http_exception_response(exc: HTTPException) -> JSONResponse:
    """Starlette's own 404/405/400s (unknown route, bad multipart) in OpenAI's shape."""
    status = exc.status_code
    error_type = _HTTP_TYPES.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    body = error_body(str(exc.detail), error_type=error_type, code=_HTTP_CODES.get(status))
    return JSONResponse(body, status_code=status, headers=dict(exc.headers or {}))


def internal_error_response() -> JSONResponse:
    """A bug on our side: say so without leaking the traceback."""
    body = error_body(
        "The server had an error while processing your request.",
        error_type="server_error",
        code="internal_error",
    )
    return JSONResponse(body, status_code=500)


class UnknownModelError(InvalidRequestError):
    """The ``model`` form field names a model this app does not serve."""

    code = "model_not_found"
