"""One request pipeline for every entry point: admit -> decode + plan -> fan out ->
gather or stream -> transcript.

The HTTP routes, the Serve handle method and (later) realtime finals all call this
module, so they admit, limit, decode and merge in exactly one way. It knows neither
Starlette nor Ray: the caller passes a ``decode_chunk`` coroutine (one Transcriber
call through a Serve handle in production, a local decoder in tests).

Why chunks: each chunk of a request is its own call, so a long file's chunks spread
over every replica and share batches with other callers' clips. At most
``max_chunks_in_flight_per_request`` of one request's chunks are out at once, so a
2-hour file cannot fill the replicas' queues ahead of a short clip that arrives after
it. Results come back in chunk order however the calls finish, and the first failure
cancels the calls still pending, so a doomed request stops using the GPU.

Admission has two steps: ``admit()`` (or ``check_room()`` at the HTTP edge, before the
body) bounds how many requests one Ingress holds and refuses a request whose projected
wait is too long; ``plan()`` decodes, then waits its turn for the model in
:mod:`serve_app.capacity`'s queue, refused there only if it could not start before its
deadline. Both happen before any response starts, so a refusal is a clean 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from serve_app.audio_budget import DecodedAudioBudget
from serve_app.capacity import ModelCapacity, QueuePolicy, ThroughputMeter
from serve_app.engine.audio import as_waveform, duration_seconds
from serve_app.engine.chunking import SAMPLE_RATE, chunk_jobs, merge_chunks
from serve_app.engine.formats import make_transcript
from serve_app.engine.options import DecodeOptions
from serve_app.engine.sample_buffer import Reserve
from serve_app.wire import (
    ChunkJob,
    ChunkResult,
    DeadlineExceededError,
    InvalidRequestError,
    Transcript,
    upload_too_large,
)

ChunkDecoder = Callable[[ChunkJob], Awaitable[ChunkResult]]
"""Decodes one chunk; raises the chunk's error."""

Audio = bytes | bytearray | memoryview | np.ndarray
"""An encoded file, or 16 kHz mono float32 samples in [-1, 1]."""


class PipelineObserver:
    """What the pipeline reports as it works, for metrics; this base ignores it all.

    Called on the event loop at every change, so implementations must be cheap.
    """

    def audio_received(self, seconds: float) -> None:
        """A request's audio was decoded; ``seconds`` long."""

    def audio_transcribed(self, seconds: float) -> None:
        """A request's audio was transcribed in full."""

    def queue_changed(self, audio_ahead_s: float, queued: int) -> None:
        """The audio not yet decoded (running and queued) or the queue's length changed."""


@dataclass(frozen=True)
class PipelineLimits:
    """What one Ingress replica refuses; from the app's config."""

    max_upload_bytes: int
    max_audio_seconds: float
    max_concurrent_requests: int
    """Requests on the model at once; the rest wait in the queue."""
    request_timeout_s: float = 900.0
    """The cap on any request's deadline, counted from its admission."""
    max_decoded_audio_seconds: float = 28800.0
    max_queued_requests: int = 64
    max_queue_wait_s: float = 30.0
    max_chunks_in_flight_per_request: int = 4
    deadline_floor_s: float = 30.0
    deadline_factor: float = 4.0
    """A request's deadline: floor + factor x (audio ahead of and in it) / throughput."""
    initial_throughput: float = 1.0
    """Audio-seconds per second assumed until this Ingress has measured its own."""


@dataclass(frozen=True)
class Plan:
    """A request after its audio decoded: the chunk calls to make and what to report."""

    jobs: list[ChunkJob]
    duration: float
    options: DecodeOptions


def plan_request(
    audio: Audio, options: DecodeOptions, *, max_seconds: float, reserve: Reserve | None = None
) -> Plan:
    """Decode the audio and cut it on Rev's chunk grid. CPU-bound: run it in a thread.

    Raises the typed audio errors (415 undecodable, 413 too long, 400 empty), or what
    ``reserve`` raises for memory it refuses. Chunks are views of one waveform;
    pickling a view sends only its own samples.
    """
    if reserve is not None and isinstance(audio, np.ndarray):
        reserve(audio.size)  # the array is validated into a copy of this size
    waveform = as_waveform(audio, max_seconds=max_seconds, reserve=reserve)
    jobs = chunk_jobs(waveform, options)
    return Plan(jobs=jobs, duration=duration_seconds(waveform), options=options)


class TranscriptionPipeline:
    """Admission and the request steps for one Ingress replica (one event loop)."""

    def __init__(
        self,
        decode_chunk: ChunkDecoder,
        *,
        limits: PipelineLimits,
        model_name: str,
        observer: PipelineObserver | None = None,
    ) -> None:
        if limits.max_chunks_in_flight_per_request < 1:
            raise ValueError("max_chunks_in_flight_per_request must be at least 1")
        self.decode_chunk = decode_chunk
        self.limits = limits
        self.model_name = model_name
        self.observer = observer or PipelineObserver()
        self._in_flight = 0
        self.decoded_audio = DecodedAudioBudget(limits.max_decoded_audio_seconds)
        self.throughput = ThroughputMeter(limits.initial_throughput)
        self.capacity = ModelCapacity(
            QueuePolicy(
                slots=limits.max_concurrent_requests,
                max_queued=limits.max_queued_requests,
                max_wait_s=limits.max_queue_wait_s,
            ),
            self.throughput,
            on_change=self.report_queue,
        )

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released: decoding, queued or on the model."""
        return self._in_flight

    @property
    def max_held(self) -> int:
        return self.limits.max_concurrent_requests + self.limits.max_queued_requests

    def check_room(self, arriving: int = 0) -> None:
        """Raise ``OverloadedError`` (503 + Retry-After) if a request arriving now
        would be refused: this Ingress holds all it may, or the projected wait for the
        model is already too long, counting requests admitted but not yet decoded and
        ``arriving`` ones (bodies still coming in) at the typical request length. Cheap,
        so the edge asks before reading a body, and a burst is shed as it arrives
        rather than after every upload in it was read and decoded."""
        capacity = self.capacity
        unplanned = self._in_flight - capacity.running - capacity.queued + arriving
        wait_s = capacity.projected_wait_s(unplanned)
        self._check_held(retry_in_s=wait_s)
        if wait_s > self.limits.max_queue_wait_s:
            raise self.capacity.too_long_a_wait(wait_s)

    def admit(self, *, wait_judged: bool = False) -> Admission:
        """Admit one request or raise ``OverloadedError`` (see ``check_room``).

        ``wait_judged``: the edge already judged the projected wait when the request
        arrived, before its body; judging it again now would refuse a request late,
        after its upload, so only the bound on requests held still applies. Once the
        audio's length is known, ``plan()`` refuses only a request that could not start
        before its deadline. Release the admission (``with`` or ``release()``) when done.
        """
        if wait_judged:
            self._check_held(retry_in_s=0)
        else:
            self.check_room()
        self._in_flight += 1
        return Admission(self)

    def _check_held(self, retry_in_s: float) -> None:
        if self._in_flight >= self.max_held:
            raise self.capacity.refusal(
                f"it holds {self._in_flight} transcriptions, its limit", retry_in_s
            )

    def _release(self) -> None:
        self._in_flight -= 1

    def report_queue(self) -> None:
        """Tell the observer the queue's state now (on every change, and on demand)."""
        self.observer.queue_changed(self.capacity.audio_ahead_s, self.capacity.queued)


class Admission:
    """One admitted request and the steps it may run; releasing twice is harmless
    (a stream is released both by its end and by the response that carried it)."""

    def __init__(self, pipeline: TranscriptionPipeline) -> None:
        self._pipeline = pipeline
        self._held = True
        self._reserved_samples = 0
        self._latest_deadline = time.monotonic() + pipeline.limits.request_timeout_s
        self._deadline = self._latest_deadline
        self._audio_left_s: float | None = None  # set while it holds a model slot
        self._window = asyncio.Semaphore(pipeline.limits.max_chunks_in_flight_per_request)

    def release(self) -> None:
        if self._held:
            self._held = False
            if self._audio_left_s is not None:
                # Chunks may hold a few ms more than the plan's duration (frame edges).
                self._pipeline.capacity.release(max(self._audio_left_s, 0.0))
            self._pipeline.decoded_audio.release(self._reserved_samples)
            self._pipeline._release()

    def _reserve(self, samples: int) -> None:
        """Decoded-audio memory for this request (called from the decode's thread)."""
        self._pipeline.decoded_audio.reserve(samples)
        self._reserved_samples += samples

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    async def plan(self, audio: Audio, options: DecodeOptions) -> Plan:
        """Check the size, decode and chunk in a worker thread (off the event loop),
        then wait for a model slot. Audio errors and refusals surface here, before any
        chunk is sent or any 200 goes out."""
        if not isinstance(audio, (bytes, bytearray, memoryview, np.ndarray)):
            raise InvalidRequestError(
                f"audio must be an encoded file (bytes) or a 16 kHz float32 array, "
                f"not {type(audio).__name__}.",
                param="audio",
            )
        limit = self._pipeline.limits.max_upload_bytes
        if not isinstance(audio, np.ndarray) and len(audio) > limit:
            raise upload_too_large(limit)
        plan = await asyncio.to_thread(
            plan_request,
            audio,
            options,
            max_seconds=self._pipeline.limits.max_audio_seconds,
            reserve=self._reserve,
        )
        self._pipeline.observer.audio_received(plan.duration)
        await self._take_slot(plan.duration)
        return plan

    async def _take_slot(self, audio_s: float) -> None:
        """Wait in line for the model, then set the deadline from what is ahead.

        The projected wait was judged at admission (``check_room``), before the body
        was read; a request refused only now would have paid for its upload and decode
        and been told late. So now it is refused only if it could not start before its
        deadline, or the queue is full.
        """
        pipeline = self._pipeline
        async with self._before_deadline():
            time_left_s = self._latest_deadline - time.monotonic()
            await pipeline.capacity.acquire(audio_s, max_wait_s=time_left_s)
        self._audio_left_s = audio_s
        limits = pipeline.limits
        expected_s = pipeline.capacity.audio_ahead_s / pipeline.throughput.rate
        self._deadline = min(
            self._latest_deadline,
            time.monotonic() + limits.deadline_floor_s + limits.deadline_factor * expected_s,
        )

    async def _decode_chunk(self, job: ChunkJob) -> ChunkResult:
        """One chunk call, within this request's fan-out window, measured."""
        async with self._window:
            audio_s = job.samples.size / SAMPLE_RATE
            meter = self._pipeline.throughput
            meter.started()
            decoded_s = 0.0
            try:
                result = await self._pipeline.decode_chunk(job)
                decoded_s = audio_s
                return result
            finally:
                meter.finished(decoded_s)
                if self._audio_left_s is not None:
                    self._audio_left_s -= audio_s
                    self._pipeline.capacity.progress(audio_s, decoded=decoded_s > 0)

    async def transcript(self, plan: Plan) -> Transcript:
        """Every chunk decoded, merged into one transcript, before the deadline."""
        async with self._before_deadline():
            results = await _decode_all(plan.jobs, self._decode_chunk)
        self._pipeline.observer.audio_transcribed(plan.duration)
        return self.merged(results, plan)

    def merged(self, results: list[ChunkResult], plan: Plan) -> Transcript:
        """The plan's chunk results, all of them in order, as one transcript."""
        return transcript_from_chunks(results, plan, model=self._pipeline.model_name)

    async def results_in_order(self, plan: Plan) -> AsyncIterator[ChunkResult]:
        """Chunk results in order, each as soon as it and those before it are ready."""
        stream = _decode_in_order(plan.jobs, self._decode_chunk)
        try:
            while True:
                async with self._before_deadline():
                    try:
                        result = await anext(stream)
                    except StopAsyncIteration:
                        break
                yield result
        finally:
            await stream.aclose()  # cancels the chunk calls still running
        self._pipeline.observer.audio_transcribed(plan.duration)

    @contextlib.asynccontextmanager
    async def _before_deadline(self) -> AsyncIterator[None]:
        """Cancel what runs inside when the request's deadline passes: a 504."""
        try:
            async with asyncio.timeout(max(self._deadline - time.monotonic(), 0.0)):
                yield
        except TimeoutError:
            raise DeadlineExceededError(
                "The transcription did not finish within its deadline (the server's "
                f"limit is {self._pipeline.limits.request_timeout_s:g} s, less for short "
                "audio)."
            ) from None

    async def transcribe(self, audio: Audio, options: DecodeOptions) -> Transcript:
        """The whole request: plan, then transcript."""
        return await self.transcript(await self.plan(audio, options))


def _start(jobs: Sequence[ChunkJob], decode_chunk: ChunkDecoder) -> list[asyncio.Future]:
    return [asyncio.ensure_future(decode_chunk(job)) for job in jobs]


def _stop(tasks: list[asyncio.Future]) -> None:
    """Cancel what is still running and mark finished failures as seen (no log noise)."""
    for task in tasks:
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()


async def _decode_all(jobs: Sequence[ChunkJob], decode_chunk: ChunkDecoder) -> list[ChunkResult]:
    """Every chunk's result in order; raises the first chunk error."""
    tasks = _start(jobs, decode_chunk)
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        _stop(tasks)


async def _decode_in_order(
    jobs: Sequence[ChunkJob], decode_chunk: ChunkDecoder
) -> AsyncIterator[ChunkResult]:
    """Yield results in chunk order as soon as each is ready; the calls are all created
    at once (``decode_chunk`` itself keeps the fan-out window)."""
    tasks = _start(jobs, decode_chunk)
    try:
        for task in tasks:
            yield await task
    finally:
        _stop(tasks)


def transcript_from_chunks(results: Sequence[ChunkResult], plan: Plan, *, model: str) -> Transcript:
    """The same assembly the single-process engine ``Transcriber`` does."""
    return make_transcript(
        merge_chunks(results),
        duration=plan.duration,
        model=model,
        decoding_mode=plan.options.decoding_mode,
        verbatimicity=plan.options.verbatimicity,
    )


def text_delta(previous_text: str, chunk_text: str) -> str:
    """The delta that extends ``previous_text`` by one chunk, so deltas concatenate to
    exactly the final ``text`` (words joined by single spaces)."""
    if not chunk_text:
        return ""
    return f" {chunk_text}" if previous_text else chunk_text
