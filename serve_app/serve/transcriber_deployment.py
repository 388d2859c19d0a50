"""The model replica: batches chunk calls from every caller into shared forwards.

Each ``decode(job)`` call is one chunk of one request. ``@serve.batch`` collects the
calls waiting on this replica into one list, and the engine's ``BatchDecoder`` turns
that list into as few encoder forwards as padding allows. The decode runs on a
single worker thread so the event loop keeps accepting the next batch's calls while
the current one computes, and so at most one batch uses the device at a time.

Serve fails every call in a batch when the batched method raises, so the batched
method never raises: each row's exception is returned as that row's value, and the
Ingress re-raises it for that request only.

Calls wait at a gate while a batch is decoding. Serve's batch loop forms the next
batch as soon as its wait timeout passes, even while the previous batch still holds
the device, so without the gate the calls that arrive during a decode are cut into
many small batches that then run one after another (measured: 16 concurrent
clients gave batches of 1-3 while 16 calls sat on the replica). Behind the gate they
all enter Serve's queue together when the device frees, and form one batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from serve_app.engine.decoder import BatchDecoder, BatchReport, is_fatal_device_error
from serve_app.engine.model import ReverbModel, load_model
from serve_app.engine.options import DecodeOptions
from serve_app.serve.config import AppConfig, BatchingConfig
from serve_app.serve.metrics import BatchStats, TranscriberMetrics
from serve_app.wire import (
    ChunkDecodeError,
    ChunkJob,
    ChunkResult,
    ReverbServeError,
    UnavailableError,
)

log = logging.getLogger("ray.serve")

DEFAULT_BATCHING = BatchingConfig()
TRANSCRIBER_MAX_ONGOING_REQUESTS = 64
"""A batch never holds more calls than the replica admits; leave room for a full batch
waiting while another computes (2 x the default max_batch_size, with headroom)."""

PROBE_AFTER_IDLE_S = 60.0
"""Health checks run a tiny forward when the replica has not decoded for this long."""
FAILED_BATCHES_UNHEALTHY = 3
"""This many batches in a row with every row failed marks the replica unhealthy."""

ChunkOutcome = ChunkResult | ReverbServeError


def _portable(outcome: ChunkResult | Exception) -> ChunkOutcome:
    """Make a row's outcome safe to send back: our typed errors as they are, anything
    else (a torch error may not even unpickle, and its text is internal detail) as a
    ``ChunkDecodeError`` 500 with a fixed message; the decoder has logged the error
    itself on this replica, where Ray's log line carries the request id."""
    if isinstance(outcome, (ChunkResult, ReverbServeError)):
        return outcome
    return ChunkDecodeError("The model failed on this audio.")


@serve.deployment(
    name="Transcriber",
    max_ongoing_requests=TRANSCRIBER_MAX_ONGOING_REQUESTS,
    user_config=DEFAULT_BATCHING.model_dump(),
    health_check_period_s=10,
    health_check_timeout_s=60,
)
class Transcriber:
    """Loads the model once per replica and decodes batches of chunks."""

    def __init__(self, config: AppConfig, *, decoder: BatchDecoder | None = None) -> None:
        """Load the model (or take ``decoder``: tests pass a fake one to drive the health
        logic without a model or a device)."""
        self._config = config
        self._decoder = decoder if decoder is not None else _load_decoder(config)
        model = self._decoder.model
        self._model_info = {
            "model": model.name,
            "device": str(model.device),
            "parameters": model.num_parameters(),
        }
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reverb-decode")
        self._batching = DEFAULT_BATCHING
        self._reconfigures = 0
        self._stats = BatchStats()
        self._metrics = TranscriberMetrics()
        self._device_free = asyncio.Event()
        self._device_free.set()
        self._in_flight = 0
        self._peak_in_flight = 0
        self._failed_batches_in_a_row = 0
        self._fatal: str | None = None
        log.info(
            "Transcriber loaded %(model)s on %(device)s (%(parameters)d parameters)",
            self._model_info,
        )

    # -- configuration ------------------------------------------------------------

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Apply new batching settings to the live batch queue; no restart, no reload.

        ``max_batch_size`` above the deployment's ``max_ongoing_requests`` cannot be
        reached (a replica holds no more calls than it admits); the config docs say so.
        """
        batching = BatchingConfig.model_validate(user_config or {})
        self._decode_batch.set_max_batch_size(batching.max_batch_size)
        self._decode_batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self._batching = batching
        self._reconfigures += 1

    # -- the batched path ---------------------------------------------------------

    async def decode(self, job: ChunkJob) -> ChunkOutcome:
        """Decode one chunk. Returns its result, or its error as a value (never raises
        for a bad row, so one bad row cannot fail the batch it shares)."""
        self._in_flight += 1
        self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        try:
            await self._device_free.wait()
            return await self._decode_batch(job)
        finally:
            self._in_flight -= 1

    @serve.batch(
        max_batch_size=DEFAULT_BATCHING.max_batch_size,
        batch_wait_timeout_s=DEFAULT_BATCHING.batch_wait_timeout_s,
    )
    async def _decode_batch(self, jobs: list[ChunkJob]) -> list[ChunkOutcome]:
        return await self._run_batch(jobs)

    async def _run_batch(self, jobs: list[ChunkJob]) -> list[ChunkOutcome]:
        """One batch on the worker thread, holding the gate; never raises.

        After a fatal device error nothing runs any more: every row fails at once with a
        503 the caller may retry elsewhere, while the failing health check gets this
        replica replaced.
        """
        if self._fatal is not None:
            return [self._device_lost()] * len(jobs)
        started = time.perf_counter()
        self._device_free.clear()
        try:
            loop = asyncio.get_running_loop()
            outcomes, report = await loop.run_in_executor(
                self._executor, self._decoder.decode, jobs
            )
        except Exception as exc:  # decode() isolates rows; this is a last resort
            log.exception("batch of %d failed outside the decoder", len(jobs))
            outcomes = [exc] * len(jobs)
            report = BatchReport(rows=len(jobs), failed_rows=len(jobs))
        finally:
            self._device_free.set()
        seconds = time.perf_counter() - started
        self._stats.record(report, seconds)
        self._metrics.record(report, seconds)
        self._track_failures(outcomes, report)
        if self._fatal is not None:
            return [o if isinstance(o, ChunkResult) else self._device_lost() for o in outcomes]
        return [_portable(o) for o in outcomes]

    def _device_lost(self) -> UnavailableError:
        return UnavailableError("The model replica's device failed; retry shortly.")

    def _track_failures(self, outcomes: list[ChunkResult | Exception], report: BatchReport) -> None:
        """Count batches in which the model failed every row. A row refused for its own
        content (a typed error) is the caller's problem and never counts, so a caller
        cannot get a healthy replica restarted by sending bad rows."""
        model_failures = [
            o for o in outcomes if isinstance(o, Exception) and not isinstance(o, ReverbServeError)
        ]
        if outcomes and len(model_failures) == len(outcomes):
            self._failed_batches_in_a_row += 1
        elif outcomes:
            self._failed_batches_in_a_row = 0
        for outcome in model_failures:
            if isinstance(outcome, Exception) and is_fatal_device_error(outcome):
                self._fatal = f"{type(outcome).__name__}: {outcome}"

    # -- health and introspection -------------------------------------------------

    async def check_health(self) -> None:
        """Raise when the model is broken, so Serve replaces this replica.

        Cheap by design: flags set by real traffic, plus a tiny forward only when the
        replica has been idle, so a health check never queues behind a busy device.
        """
        if self._fatal is not None:
            raise RuntimeError(f"device error, model unusable: {self._fatal}")
        if self._failed_batches_in_a_row >= FAILED_BATCHES_UNHEALTHY:
            raise RuntimeError(
                f"the last {self._failed_batches_in_a_row} batches failed on every chunk"
            )
        idle_for = time.monotonic() - self._stats.last_success_at
        if self._device_free.is_set() and idle_for > PROBE_AFTER_IDLE_S:
            await self._probe()

    async def _probe(self) -> None:
        rng = np.random.default_rng(0)
        samples = (rng.standard_normal(16000) * 0.01).astype(np.float32)
        job = ChunkJob(samples, 0, DecodeOptions(decoding_mode="ctc_greedy_search"))
        loop = asyncio.get_running_loop()
        outcomes, _ = await loop.run_in_executor(self._executor, self._decoder.decode, [job])
        if isinstance(outcomes[0], Exception):
            if is_fatal_device_error(outcomes[0]):
                self._fatal = str(outcomes[0])
            raise RuntimeError(f"health probe forward failed: {outcomes[0]!r}")
        self._stats.last_success_at = time.monotonic()

    async def ready(self) -> dict[str, Any]:
        """What /readyz reports; raises if the model is unusable."""
        await self.check_health()
        return dict(self._model_info)

    async def stats(self, reset_peak: bool = False) -> dict[str, Any]:
        """Batching counters for this replica, plus who it is (to spot restarts).

        ``peak_chunks_in_flight`` is the most chunk calls this replica held at once
        (queued or decoding) since the last ``reset_peak``: batches can only be as
        large as that, so it tells a starved replica from a slow one.
        """
        import ray

        context = serve.get_replica_context()
        peak = self._peak_in_flight
        if reset_peak:
            self._peak_in_flight = self._in_flight
        return {
            **self._stats.as_dict(),
            **self._batching.model_dump(),
            "reconfigures": self._reconfigures,
            "chunks_in_flight": self._in_flight,
            "peak_chunks_in_flight": peak,
            "replica_id": context.replica_id.unique_id,
            "actor_id": ray.get_runtime_context().get_actor_id(),
            "pid": os.getpid(),
            "model": self._model_info["model"],
            "device": self._model_info["device"],
        }


def load_configured_model(config: AppConfig) -> ReverbModel:
    """The model an app's config names, on its device (the Transcriber's and the
    realtime deployment's)."""
    cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else None
    return load_model(
        config.model,
        device=config.device,
        cache_dir=cache_dir,
        checkpoint_name=config.checkpoint_name,
        name=config.served_model_name,
    )


def _load_decoder(config: AppConfig) -> BatchDecoder:
    return BatchDecoder(load_configured_model(config), max_padded_frames=config.max_padded_frames)
