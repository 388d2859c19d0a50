"""What crosses a process boundary: chunk calls, results, transcripts and typed errors.

The CPU Ingress, the GPU Transcriber, the engine and Python callers of the Serve handle
all exchange these. The module imports neither torch nor Starlette (only numpy and
pydantic), so the Ingress never loads torch and the Transcriber never loads a web
framework just to name an error. Errors travel as values (a Transcriber returns a
row's error instead of raising it), so every type here pickles.

Each error carries its HTTP status and OpenAI error ``type``/``code``: the HTTP layer
renders them without a lookup table of its own, and Python callers catch one base
class, :class:`ReverbServeError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from serve_app.engine.options import DecodeOptions

# --------------------------------------------------------------------------- results


class Word(BaseModel):
    """One recognised word with absolute times in seconds from the start of the audio."""

    word: str
    start: float = Field(ge=0.0, description="Start time in seconds.")
    end: float = Field(ge=0.0, description="End time in seconds.")
    confidence: float = Field(ge=0.0, le=1.0, description="Posterior confidence, 0 to 1.")


class Segment(BaseModel):
    """A run of words shown together as one subtitle cue / OpenAI segment."""

    id: int
    start: float
    end: float
    text: str
    words: list[Word] = Field(default_factory=list)
    avg_confidence: float = 0.0


class Transcript(BaseModel):
    """What one request gets back, before rendering to a response format."""

    text: str
    words: list[Word]
    segments: list[Segment]
    duration: float = Field(ge=0.0, description="Audio duration in seconds.")
    language: str = "en"
    model: str = "reverb_asr_v1"
    decoding_mode: str = "attention_rescoring"
    verbatimicity: float = 1.0


@dataclass
class ChunkJob:
    """One chunk of one request: 16 kHz float samples in [-1, 1] and its options.

    ``offset_ms`` places the chunk in its request's audio, so the words a replica
    returns already carry absolute times and chunks can finish in any order.
    """

    samples: np.ndarray
    offset_ms: int
    options: DecodeOptions


@dataclass
class ChunkResult:
    """Words (absolute times) and raw tokens for one chunk job."""

    words: list[Word]
    tokens: list[int]

    @property
    def text(self) -> str:
        return " ".join(w.word for w in self.words)


# --------------------------------------------------------------------------- errors


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


class ReservedHeaderError(InvalidRequestError):
    """The request carries a header the serving framework would act on."""

    code = "reserved_header"


class MissingParameterError(InvalidRequestError):
    """A required field (``file``) was not sent."""

    code = "missing_required_parameter"


class AudioDecodeError(InvalidRequestError):
    """The upload is not audio we can decode (random bytes, truncated, no audio stream)."""

    status_code = 415
    code = "unsupported_audio"


class EmptyAudioError(InvalidRequestError):
    """The upload decodes to no samples at all."""

    code = "empty_audio"


class AudioTooLongError(InvalidRequestError):
    """The audio is longer than the configured maximum; detected while decoding."""

    status_code = 413
    code = "audio_too_long"


class PayloadTooLargeError(InvalidRequestError):
    """The upload has more bytes than the configured maximum."""

    status_code = 413
    code = "payload_too_large"


def upload_too_large(limit: int) -> PayloadTooLargeError:
    """The one wording of the upload limit, whichever layer notices it first."""
    return PayloadTooLargeError(f"The upload is larger than the {limit}-byte limit.", param="file")


class BodyTimeoutError(InvalidRequestError):
    """The request body arrived too slowly (or stopped); the server stopped waiting."""

    status_code = 408
    code = "request_timeout"


class AuthenticationError(ReverbServeError):
    """No or a wrong bearer key on a /v1 route."""

    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class RateLimitError(ReverbServeError):
    """This client holds as many transcriptions as one client may (429, OpenAI's
    ``rate_limit_exceeded``); other clients are unaffected."""

    status_code = 429
    error_type = "requests"
    code = "rate_limit_exceeded"


class NotFoundError(ReverbServeError):
    """An unknown model id or route."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    """``GET /v1/models/{id}`` for an id this app does not serve."""

    code = "model_not_found"


class UnknownModelError(ModelNotFoundError):
    """The ``model`` field of a request names a model this app does not serve.

    A 404 like OpenAI's ``model_not_found``: model ids are only ever looked up in
    the served list, never joined into a path.
    """


class ServerSideError(ReverbServeError):
    """Base for errors that are not the caller's fault (5xx)."""

    status_code = 500
    error_type = "server_error"


class ModelLoadError(ServerSideError):
    """The model cannot be loaded; the message names the fix."""

    status_code = 503
    code = "model_unavailable"


class OverloadedError(ServerSideError):
    """The service is at its capacity; the caller should retry later."""

    status_code = 503
    code = "overloaded"
    retry_after_s: int | None = None
    """When the refusal knows how long the backlog takes to drain (else the config's)."""


class UnavailableError(ServerSideError):
    """The model replicas cannot take work right now (starting, restarting, gone)."""

    status_code = 503
    code = "model_unavailable"


class DeadlineExceededError(ServerSideError):
    """The request ran past the server's deadline; its remaining chunk calls were
    cancelled."""

    status_code = 504
    code = "deadline_exceeded"


class ChunkDecodeError(ServerSideError):
    """The model failed on audio that decoded fine: our fault, so a 500.

    The Transcriber turns arbitrary engine exceptions into this so that what crosses
    the Ray handle always unpickles and always has a status; its message is fixed and
    never holds the exception's text (that goes to the replica's log, not to the client).
    """

    code = "decode_failed"
