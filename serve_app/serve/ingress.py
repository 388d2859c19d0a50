"""The CPU front door: HTTP and the Python handle API, one code path for both.

For each request the Ingress decodes the audio (in a thread, off the event loop),
cuts it on Rev's chunk grid, sends one Transcriber call per chunk, then merges and
renders. Many small calls rather than one big one is the point: a long file's
chunks spread over every Transcriber replica and share batches with other callers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle

from serve_app.engine.decoder import ChunkJob, ChunkResult
from serve_app.engine.errors import OverloadedError, PayloadTooLargeError, ReverbServeError
from serve_app.engine.options import DecodeOptions
from serve_app.engine.types import Transcript
from serve_app.serve.config import AppConfig
from serve_app.serve.errors import ChunkDecodeError, UnavailableError
from serve_app.serve.form import check_language, parse_options
from serve_app.serve.http_api import build_http_app
from serve_app.serve.limits import ConcurrencyLimiter
from serve_app.serve.metrics import IngressMetrics
from serve_app.serve.pipeline import (
    Plan,
    decode_all,
    decode_in_order,
    plan_request,
    transcript_from_chunks,
)

INGRESS_MAX_ONGOING_HEADROOM = 16
"""Serve admits this many calls beyond our own limit, so that over-limit requests and
health probes reach our code and get an OpenAI-shaped 503 instead of queueing."""
READINESS_TIMEOUT_S = 10.0

_UNAVAILABLE = (DeploymentUnavailableError, ReplicaUnavailableError, RayActorError)


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 1})
@serve.ingress()
class Ingress:
    """Parses, admits, fans out, merges and renders; holds no model."""

    def __init__(self, transcriber: DeploymentHandle, config: AppConfig) -> None:
        self._transcriber = transcriber
        self.config = config
        self.api_key = config.resolve_api_key()
        self.limiter = ConcurrencyLimiter(config.max_concurrent_requests)
        self.started_at = int(time.time())
        self._metrics = IngressMetrics()

    def __serve_build_asgi_app__(self):
        """Serve calls this once per replica: the routes close over this instance."""
        return build_http_app(self)

    # -- Python handle API --------------------------------------------------------

    async def transcribe(self, audio: bytes | np.ndarray, **options: Any) -> Transcript:
        """Transcribe ``audio`` (an encoded file, or 16 kHz mono float32 in [-1, 1]).

        ``options`` are the Reverb options (``decoding_mode``, ``verbatimicity``, ...)
        and, as over HTTP, ``language`` (English only). The same limits and errors as
        HTTP apply; errors are raised as the engine's typed exceptions (``status_code``,
        ``code`` and ``param`` attached).
        """
        check_language(options.pop("language", None))
        decode_options = parse_options(options)
        with self.limiter.slot():
            if isinstance(audio, (bytes, bytearray, memoryview)) and (
                len(audio) > self.config.max_upload_bytes
            ):
                raise PayloadTooLargeError(
                    f"The upload is larger than the {self.config.max_upload_bytes}-byte limit.",
                    param="file",
                )
            plan = await self.plan(audio, decode_options)
            return await self.complete(plan)

    # -- the pipeline the HTTP layer drives ---------------------------------------

    async def plan(self, audio: bytes | np.ndarray, options: DecodeOptions) -> Plan:
        """Decode and chunk in a worker thread; audio errors surface here as 4xx."""
        return await asyncio.to_thread(
            plan_request, audio, options, max_seconds=self.config.max_audio_seconds
        )

    async def complete(self, plan: Plan) -> Transcript:
        results = await decode_all(plan.jobs, self._decode_chunk)
        self._metrics.record_audio(plan.duration)
        return transcript_from_chunks(results, plan, model=self.config.served_model_name)

    async def results_in_order(self, plan: Plan) -> AsyncIterator[ChunkResult]:
        async for result in decode_in_order(plan.jobs, self._decode_chunk):
            yield result
        self._metrics.record_audio(plan.duration)

    async def _decode_chunk(self, job: ChunkJob) -> ChunkResult:
        """One Transcriber call; its error-as-value is raised here, for this request only."""
        try:
            outcome = await self._transcriber.decode.remote(job)
        except BackPressureError as exc:
            raise OverloadedError("The model replicas are saturated; retry shortly.") from exc
        except _UNAVAILABLE as exc:
            raise UnavailableError("No model replica is available; retry shortly.") from exc
        except RayTaskError as exc:
            raise ChunkDecodeError("The model replica failed on this request.") from exc
        if isinstance(outcome, ReverbServeError):
            raise outcome
        if not isinstance(outcome, ChunkResult):
            raise ChunkDecodeError(f"Unexpected chunk outcome {type(outcome).__name__}.")
        return outcome

    # -- health and observation ---------------------------------------------------

    async def readiness(self) -> dict[str, Any]:
        """Ask a Transcriber replica whether its model is loaded and working."""
        response = self._transcriber.ready.remote()
        try:
            info = await asyncio.wait_for(_resolve(response), READINESS_TIMEOUT_S)
        except asyncio.TimeoutError as exc:
            response.cancel()
            raise UnavailableError("No model replica answered in time.") from exc
        except Exception as exc:
            raise UnavailableError(f"The model is not ready ({type(exc).__name__}).") from exc
        return {**info, "in_flight": self.limiter.in_flight}

    def observe(self, route: str, status: int, seconds: float) -> None:
        self._metrics.record_request(route, status, seconds)


async def _resolve(response: Any) -> Any:
    """``asyncio.wait_for`` needs a coroutine; a DeploymentResponse is only awaitable."""
    return await response
