"""The OpenAI-compatible HTTP API: FastAPI routes that parse, call the pipeline, render.

The routes hold no limits or decoding logic of their own: the edge middleware
(:mod:`http_edge`) takes the body in under its checks; the route validates the form
(a pydantic model, so ``/openapi.json`` is generated from the parser itself), is
admitted by the pipeline, runs it, and renders. Whoever serves the app provides an
:class:`HttpBackend` (the Ingress replica in production, a test double in unit
tests) through ``backend_provider``.

What FastAPI cannot express, and is done here by hand: OpenAI's 400 (not FastAPI's
422) for validation errors, and an error envelope for FastAPI's own 404/405 (both in
:mod:`http_errors`); the SSE body as an async generator (FastAPI declares the media
type in the docs only); and per-deployment limits (body size, API key, CORS origins),
which come from the replica's config at run time rather than at import time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serve_app import __version__
from serve_app.engine.formats import render
from serve_app.pipeline import Admission, Plan, TranscriptionPipeline, text_delta
from serve_app.serve.config import AppConfig
from serve_app.serve.http_edge import TRANSCRIPTIONS_PATH, EdgeMiddleware
from serve_app.serve.http_errors import (
    client_message,
    error_body,
    exception_handlers,
    internal_error_body,
    is_fault,
    request_id_of,
)
from serve_app.serve.http_models import (
    ErrorBody,
    Health,
    ModelList,
    ModelObject,
    Readiness,
    TranscriptionForm,
    TranscriptionJson,
    TranscriptionVerboseJson,
)
from serve_app.serve.web_routes import add_web_routes
from serve_app.wire import ChunkResult, ModelNotFoundError, ReverbServeError, UnknownModelError

log = logging.getLogger("ray.serve")

MAX_FORM_FIELDS = 100
"""Text fields per form: OpenAI's form has about twenty."""


class HttpBackend(Protocol):
    """What the routes need from whoever serves them."""

    config: AppConfig
    api_key: str | None
    pipeline: TranscriptionPipeline
    started_at: int

    async def readiness(self) -> dict[str, Any]: ...

    def observe(self, route: str, status: int, seconds: float, code: str | None) -> None:
        """One answered request; ``code`` is the error code of an error answer."""

    def observe_first_delta(self, seconds: float) -> None:
        """A streamed request's first text delta went out ``seconds`` after it arrived."""


def _backend(request: Request) -> HttpBackend:
    return request.app.state.backend_provider()


Backend = Annotated[HttpBackend, Depends(_backend)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "A bad field or value (param names it).",
        401: "Missing or wrong API key (only when one is configured).",
        404: "The model field names a model this app does not serve.",
        408: "The request body arrived too slowly.",
        413: "The upload or its audio is over the configured limit.",
        415: "The upload is not audio that can be decoded.",
        429: "This client holds max_requests_per_client transcriptions already; retry "
        "after Retry-After seconds.",
        503: "At capacity or no model replica; retry after Retry-After seconds.",
        504: "The transcription ran past the server's request_timeout_s.",
    }.items()
}
_TEXT = {
    "text/plain": {"schema": {"type": "string"}},
    "text/vtt": {"schema": {"type": "string"}},
}
_SSE = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "description": "One server-sent event per chunk (OpenAI's transcription stream).",
            "required": ["data"],
            "properties": {
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "description": "transcript.text.delta {delta}, then transcript.text.done "
                    "{text}; or an OpenAI error object if the stream fails.",
                }
            },
        }
    }
}


def create_http_app(backend_provider: Callable[[], HttpBackend]) -> FastAPI:
    """A fresh app whose routes and middleware ask ``backend_provider`` for the backend."""
    app = FastAPI(
        title="reverb-serve",
        version=__version__,
        summary="Rev's Reverb ASR behind an OpenAI-compatible transcription API.",
        form_limits={"max_files": 1, "max_fields": MAX_FORM_FIELDS},
        exception_handlers=exception_handlers(lambda request: _backend(request).config),
        docs_url=None,
        redoc_url=None,
    )
    app.state.backend_provider = backend_provider
    app.add_middleware(EdgeMiddleware, backend=backend_provider)
    _add_routes(app)
    add_web_routes(app)
    return app


def _add_routes(app: FastAPI) -> None:
    app.post(
        TRANSCRIPTIONS_PATH,
        response_model=None,
        summary="Transcribe audio (OpenAI's createTranscription, plus Reverb options).",
        responses={
            200: {
                "model": TranscriptionJson | TranscriptionVerboseJson,
                "content": {**_TEXT, **_SSE},
                "description": "json/verbose_json as JSON; text, srt, vtt and ctm as "
                "text; stream=true as server-sent events.",
            },
            **_ERRORS,
        },
    )(create_transcription)
    app.get("/v1/models", response_model=ModelList, response_model_exclude_none=True)(list_models)
    app.get(
        "/v1/models/{model_id:path}",
        response_model=ModelObject,
        response_model_exclude_none=True,
        responses={404: {"model": ErrorBody}},
    )(retrieve_model)
    app.get("/healthz", response_model=Health, summary="The Ingress is alive.")(healthz)
    app.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": ErrorBody}},
        summary="A model replica is loaded and working.",
    )(readyz)


MultipartForm = Annotated[TranscriptionForm, Form(media_type="multipart/form-data")]


async def create_transcription(request: Request, backend: Backend, form: MultipartForm) -> Response:
    config = backend.config
    model = form.model or config.served_model_name
    if model not in config.accepted_model_ids:
        raise UnknownModelError(
            f"The model {_shown(model)} does not exist; use one of "
            f"{', '.join(config.accepted_model_ids)}.",
            param="model",
        )
    admission = backend.pipeline.admit(wait_judged=True)  # by the edge, on arrival
    streamed = False
    try:
        audio = await form.file.read()
        plan = await admission.plan(audio, form.decode_options())
        if form.stream:
            streamed = True  # the response releases the admission when the stream ends
            arrived = request.state.started_at  # set by the edge
            events = _sse_events(
                admission,
                plan,
                request_id_of(request),
                first_delta=lambda: backend.observe_first_delta(time.perf_counter() - arrived),
                final_body=_streamed_body(form, admission, plan),
            )
            return _AdmittedStream(events, admission)
        transcript = await admission.transcript(plan)
    finally:
        if not streamed:
            admission.release()
    body, media_type = render(
        transcript,
        form.response_format,
        audio_name=_audio_name(form.file.filename),
        timestamp_granularities=form.granularities,
    )
    if isinstance(body, dict):
        return JSONResponse(body, media_type=media_type)
    return Response(body, media_type=media_type)


class _AdmittedStream(StreamingResponse):
    """The SSE response, holding the request's admission until the stream ends however
    it ends, including a client that leaves before the first event."""

    def __init__(self, events: AsyncIterator[str], admission: Admission) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._admission = admission

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._admission.release()


def _shown(name: str, limit: int = 64) -> str:
    """A caller-chosen name as error text: quoted, and cut short so that a 10 kB name
    does not come back as a 10 kB message."""
    return repr(name[:limit] + "..." if len(name) > limit else name)


def _audio_name(filename: str | None) -> str:
    """The upload's base name (CTM's first column), never a client-chosen path."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    return name or "audio"


def _streamed_body(
    form: TranscriptionForm, admission: Admission, plan: Plan
) -> Callable[[list[ChunkResult]], dict[str, Any]] | None:
    """What the stream's ``done`` event carries besides the text: a Reverb extension.

    OpenAI streams only ``json`` transcriptions; with ``stream=true`` and
    ``response_format=verbose_json``, the done event's ``transcription`` holds the
    verbose_json body (segments, words, confidences, as the granularities ask), so a
    client (the browser page) gets the live deltas and the timed words from one upload.
    """
    if form.response_format != "verbose_json":
        return None

    def body(results: list[ChunkResult]) -> dict[str, Any]:
        transcript = admission.merged(results, plan)
        rendered, _ = render(transcript, "verbose_json", timestamp_granularities=form.granularities)
        return rendered  # type: ignore[return-value]  # verbose_json renders a dict

    return body


async def _sse_events(
    admission: Admission,
    plan: Plan,
    request_id: str | None,
    first_delta: Callable[[], None],
    final_body: Callable[[list[ChunkResult]], dict[str, Any]] | None = None,
) -> AsyncIterator[str]:
    """OpenAI's transcription stream: text deltas in chunk order, then the full text
    (and ``final_body``'s extension, when given); ``first_delta`` is called as the first
    delta goes out (a metric).

    Errors after the 200 has gone out are sent as an ``error`` event, which the OpenAI
    SDK raises as ``APIError``; server-side ones quote the request id, as a 500 would.
    """
    text = ""
    results: list[ChunkResult] = []
    try:
        async for result in admission.results_in_order(plan):
            results.append(result)
            delta = text_delta(text, result.text)
            if delta:
                if not text:
                    first_delta()
                text += delta
                yield _sse({"type": "transcript.text.delta", "delta": delta})
        done: dict[str, Any] = {"type": "transcript.text.done", "text": text}
        if final_body is not None:
            done["transcription"] = final_body(results)
        yield _sse(done)
    except ReverbServeError as exc:
        if is_fault(exc):
            log.warning("request %s failed mid-stream: %r", request_id, exc)
        message = client_message(exc, request_id)
        yield _sse(error_body(message, error_type=exc.error_type, code=exc.code))
    except Exception:
        log.exception("request %s: transcription stream failed", request_id)
        yield _sse(internal_error_body(request_id))


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _model_object(backend: HttpBackend, model_id: str) -> ModelObject:
    return ModelObject(
        id=model_id,
        object="model",
        created=backend.started_at,
        owned_by="rev",
        root=backend.config.served_model_name,
    )


async def list_models(backend: Backend) -> ModelList:
    return ModelList(data=[_model_object(backend, m) for m in backend.config.accepted_model_ids])


async def retrieve_model(model_id: str, backend: Backend) -> ModelObject:
    if model_id not in backend.config.accepted_model_ids:
        raise ModelNotFoundError(f"The model {_shown(model_id)} does not exist.", param="model")
    return _model_object(backend, model_id)


async def healthz() -> Health:
    return Health()


async def readyz(backend: Backend) -> Readiness:
    return Readiness(**await backend.readiness())
