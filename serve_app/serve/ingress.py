"""The CPU front door: wires the request pipeline to the Transcriber handle.

HTTP (the FastAPI app of :mod:`http_api`, mounted with ``@serve.ingress``) and the
Python handle method :meth:`Ingress.transcribe` run the same pipeline: admit, decode
and plan, one Transcriber call per chunk, gather, merge. This class only supplies the
chunk call, maps Ray's failures to typed errors, and answers readiness.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
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

from serve_app.pipeline import TranscriptionPipeline
from serve_app.request_options import parse_request_options
from serve_app.serve.config import AppConfig
from serve_app.serve.http_api import create_http_app
from serve_app.serve.metrics import IngressMetrics
from serve_app.wire import (
    ChunkDecodeError,
    ChunkJob,
    ChunkResult,
    OverloadedError,
    ReverbServeError,
    Transcript,
    UnavailableError,
)

TEST_LEAK_ENV = "REVERB_SERVE_TEST_LEAK_KB"
"""Test-only: keep this many kB per request forever, so that the soak's leak detector
can be shown to catch a leak (its negative control). Never set in a real deployment."""
GAUGE_REFRESH_S = 5.0
"""Ray stops exporting a gauge about 30 s after its last ``set``: the queue gauges are
set again this often, so an idle queue reads 0 rather than vanishing."""
READINESS_TIMEOUT_S = 10.0
"""A probe that no Transcriber answers within this is a 503."""

_UNAVAILABLE = (DeploymentUnavailableError, ReplicaUnavailableError, RayActorError)


def _this_replica() -> Ingress:
    """The Ingress instance serving this request (Serve's ``servable_object``)."""
    return serve.get_replica_context().servable_object


http_app = create_http_app(_this_replica)


async def decode_via(
    transcriber: DeploymentHandle, job: ChunkJob, on_retry: Callable[[], None] = lambda: None
) -> ChunkResult:
    """One chunk through the Transcriber; its error-as-value is raised here, for this
    request only.

    A chunk whose replica died or lost its device is sent once more: chunks are
    idempotent, and Serve routes the second call to a replica that is alive. Ray's
    failures become typed errors: saturation and lost replicas are 503s the client may
    retry, a replica that failed on the call is our 500.
    """
    try:
        return await _decode_once(transcriber, job)
    except UnavailableError:
        on_retry()
        return await _decode_once(transcriber, job)


async def _decode_once(transcriber: DeploymentHandle, job: ChunkJob) -> ChunkResult:
    try:
        outcome = await transcriber.decode.remote(job)
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


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 1})
@serve.ingress(http_app)
class Ingress:
    """The pipeline, bound to this app's Transcriber; holds no model."""

    def __init__(self, transcriber: DeploymentHandle, config: AppConfig) -> None:
        self._transcriber = transcriber
        self.config = config
        self.api_key = config.resolve_api_key()
        self.started_at = int(time.time())
        self._metrics = IngressMetrics()
        self._gauge_task: asyncio.Task[None] | None = None
        self._model_info: dict[str, Any] | None = None
        self._test_leak_bytes = int(os.environ.get(TEST_LEAK_ENV, "0") or 0) * 1024
        self._test_leaked: list[bytes] = []
        self._last_chunk_ok = float("-inf")
        self.pipeline = TranscriptionPipeline(
            self._decode_chunk,
            limits=config.pipeline_limits(),
            model_name=config.served_model_name,
            observer=self._metrics,
        )

    def _keep_gauges_fresh(self) -> None:
        """Start, once, the task that re-sets the queue gauges (on the first call that
        runs on the replica's event loop; the constructor may not)."""
        if self._gauge_task is None:
            self._gauge_task = asyncio.get_running_loop().create_task(self._refresh_gauges())

    async def _refresh_gauges(self) -> None:
        while True:
            self.pipeline.report_queue()
            await asyncio.sleep(GAUGE_REFRESH_S)

    async def transcribe(self, audio: bytes | np.ndarray, **options: Any) -> Transcript:
        """Transcribe ``audio`` (an encoded file, or 16 kHz mono float32 in [-1, 1]).

        ``options`` are the Reverb options (``decoding_mode``, ``verbatimicity``, ...)
        and ``language`` (English only), validated as HTTP validates them. The same
        limits and errors apply; errors are raised as the typed exceptions of
        :mod:`serve_app.wire` (``status_code``, ``code`` and ``param`` attached).
        """
        self._keep_gauges_fresh()
        decode_options = parse_request_options(options)
        with self.pipeline.admit() as admission:
            return await admission.transcribe(audio, decode_options)

    async def _decode_chunk(self, job: ChunkJob) -> ChunkResult:
        result = await decode_via(self._transcriber, job, self._metrics.record_chunk_retry)
        self._last_chunk_ok = time.monotonic()
        return result

    async def readiness(self) -> dict[str, Any]:
        """Whether a Transcriber replica has its model loaded and working.

        Under load a probe sent to a Transcriber would wait behind chunk calls and time
        out while the service is fine; a chunk decoded within the last probe timeout
        is the same evidence, so the probe is only sent when no chunk succeeded lately.
        """
        if self._model_info and time.monotonic() - self._last_chunk_ok < READINESS_TIMEOUT_S:
            return self._readiness_report(self._model_info)
        response = self._transcriber.ready.remote()
        try:
            info = await asyncio.wait_for(_resolve(response), READINESS_TIMEOUT_S)
        except TimeoutError as exc:
            response.cancel()
            raise UnavailableError("No model replica answered in time.") from exc
        except Exception as exc:
            raise UnavailableError(f"The model is not ready ({type(exc).__name__}).") from exc
        self._model_info = info
        return self._readiness_report(info)

    def _readiness_report(self, info: dict[str, Any]) -> dict[str, Any]:
        pipeline = self.pipeline
        return {
            **info,
            "in_flight": pipeline.in_flight,
            "on_model": pipeline.capacity.running,
            "queued": pipeline.capacity.queued,
            "throughput_audio_s_per_s": round(pipeline.throughput.rate, 2),
            "drain_rate_audio_s_per_s": round(pipeline.capacity.drain_rate, 2),
            "typical_request_audio_s": round(pipeline.capacity.typical_request_audio_s, 2),
            "decoded_audio_seconds": pipeline.decoded_audio.held_seconds,
        }

    def observe(self, route: str, status: int, seconds: float, code: str | None) -> None:
        self._keep_gauges_fresh()
        self._metrics.record_request(route, status, seconds, code)
        if self._test_leak_bytes:
            self._test_leaked.append(b"\x01" * self._test_leak_bytes)

    def observe_first_delta(self, seconds: float) -> None:
        self._metrics.record_first_delta(seconds)


async def _resolve(response: Any) -> Any:
    """``asyncio.wait_for`` needs a coroutine; a DeploymentResponse is only awaitable."""
    return await response
