"""Typed errors the engine raises for caller mistakes.

Each carries an HTTP status and an OpenAI error ``type``/``code`` so the HTTP
layer maps them without a lookup table of its own, and Python callers can catch
one base class.
"""

from __future__ import annotations


class ReverbServeError(Exception):
    """Base class for every error reverb-serve raises on purpose."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequestError(ReverbServeError):
    """The caller sent an option or value the service cannot honour."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_value"


class AudioDecodeError(InvalidRequestError):
    """The upload is not audio we can decode (random bytes, truncated, no audio stream)."""

    status_code = 415
    code = "unsupported_audio"


class EmptyAudioError(InvalidRequestError):
    """The upload decodes to no samples at all."""

    status_code = 400
    code = "empty_audio"


class AudioTooLongError(InvalidRequestError):
    """The audio is longer than the configured maximum; detected while decoding."""

    status_code = 413
    code = "audio_too_long"


class PayloadTooLargeError(InvalidRequestError):
    """The upload has more bytes than the configured maximum."""

    status_code = 413
    code = "payload_too_large"


class ModelLoadError(ReverbServeError):
    """The model cannot be loaded; the message names the fix."""

    status_code = 503
    error_type = "server_error"
    code = "model_unavailable"


class OverloadedError(ReverbServeError):
    """The service is at its concurrency limit; the caller should retry later."""

    status_code = 503
    error_type = "server_error"
    code = "overloaded"
