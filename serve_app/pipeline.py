"""One request pipeline for every entry point: admit -> decode + plan -> fan out ->
gather or stream -> transcript.

The HTTP routes, the Serve handle method and (later) realtime finals all call this
module, so they admit, limit, decode and merge in exactly one way. It knows neither
Starlette nor Ray: the caller passes a ``decode_chunk`` coroutine (one Transcriber
call through a Serve handle in production, a local decoder in tests).

Why chunks: each chunk of a request is its own call, so a long file's chunks spread
over every replica and share batches with other callers' clips. Results come back in
chunk order however the calls finish, and the first failure cancels the calls still
pending, so a doomed request stops using the GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

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
    OverloadedError,
    Transcript,
    upload_too_large,
)

ChunkDecoder = Callable[[ChunkJob], Awaitable[ChunkResult]]
"""Decodes one chunk; raises the chunk's error."""

Audio = bytes | bytearray | memoryview | np.ndarray
"""An encoded file, or 16 kHz mono float32 samples in [-1, 1]."""


@dataclass(frozen=True)
class PipelineLimits:
    """What one Ingress replica refuses; from the app's config."""

    max_upload_bytes: int
    max_audio_seconds: float
    max_concurrent_requests: int
    request_timeout_s: float = 900.0
    max_decoded_audio_seconds: float = 28800.0


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


class DecodedAudioBudget:
    """How much decoded audio one Ingress holds at once, in samples.

    A few hundred kB of Opus decode to hundreds of MB, so counting requests bounds
    nothing; counting what their waveforms will occupy does. Decodes run in worker
    threads, hence the lock.
    """

    def __init__(self, max_seconds: float) -> None:
        self.max_samples = round(max_seconds * SAMPLE_RATE)
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held_seconds(self) -> float:
        return self._held / SAMPLE_RATE

    def reserve(self, samples: int) -> None:
        with self._lock:
            if self._held + samples > self.max_samples:
                raise OverloadedError(
                    "The server holds as much decoded audio as it may "
                    f"({self.max_samples / SAMPLE_RATE:g} s); retry shortly."
                )
            self._held += samples

    def release(self, samples: int) -> None:
        with self._lock:
            self._held -= samples


class TranscriptionPipeline:
    """Admission and the request steps for one Ingress replica (one event loop)."""

    def __init__(
        self,
        decode_chunk: ChunkDecoder,
        *,
        limits: PipelineLimits,
        model_name: str,
        on_audio_done: Callable[[float], None] | None = None,
    ) -> None:
        if limits.max_concurrent_requests < 1:
            raise ValueError("max_concurrent_requests must be at least 1")
        self.decode_chunk = decode_chunk
        self.limits = limits
        self.model_name = model_name
        self._on_audio_done = on_audio_done
        self._in_flight = 0
        self.decoded_audio = DecodedAudioBudget(limits.max_decoded_audio_seconds)

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released (no lock: one event loop)."""
        return self._in_flight

    def admit(self) -> Admission:
        """Admit one request or raise ``OverloadedError`` (503 + Retry-After).

        Called before anything is read, so a full replica spends nothing on uploads it
        would drop. Release the admission (``with`` or ``release()``) when done.
        """
        if self._in_flight >= self.limits.max_concurrent_requests:
            raise OverloadedError(
                f"The server is at its limit of {self.limits.max_concurrent_requests} "
                "concurrent transcriptions; retry shortly."
            )
        self._in_flight += 1
        return Admission(self)

    def _release(self) -> None:
        self._in_flight -= 1

    def _audio_done(self, plan: Plan) -> None:
        if self._on_audio_done is not None:
            self._on_audio_done(plan.duration)


class Admission:
    """One admitted request and the steps it may run; releasing twice is harmless
    (a stream is released both by its end and by the response that carried it)."""

    def __init__(self, pipeline: TranscriptionPipeline) -> None:
        self._pipeline = pipeline
        self._held = True
        self._reserved_samples = 0
        self._deadline = time.monotonic() + pipeline.limits.request_timeout_s

    def release(self) -> None:
        if self._held:
            self._held = False
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
        """Check the size, then decode and chunk in a worker thread (off the event loop);
        audio errors surface here, before any chunk is sent or any 200 goes out."""
        if not isinstance(audio, (bytes, bytearray, memoryview, np.ndarray)):
            raise InvalidRequestError(
                f"audio must be an encoded file (bytes) or a 16 kHz float32 array, "
                f"not {type(audio).__name__}.",
                param="audio",
            )
        limit = self._pipeline.limits.max_upload_bytes
        if not isinstance(audio, np.ndarray) and len(audio) > limit:
            raise upload_too_large(limit)
        return await asyncio.to_thread(
            plan_request,
            audio,
            options,
            max_seconds=self._pipeline.limits.max_audio_seconds,
            reserve=self._reserve,
        )

    async def transcript(self, plan: Plan) -> Transcript:
        """Every chunk decoded, merged into one transcript, before the deadline."""
        async with self._before_deadline():
            results = await _decode_all(plan.jobs, self._pipeline.decode_chunk)
        self._pipeline._audio_done(plan)
        return transcript_from_chunks(results, plan, model=self._pipeline.model_name)

    async def results_in_order(self, plan: Plan) -> AsyncIterator[ChunkResult]:
        """Chunk results in order, each as soon as it and those before it are ready."""
        stream = _decode_in_order(plan.jobs, self._pipeline.decode_chunk)
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
        self._pipeline._audio_done(plan)

    @contextlib.asynccontextmanager
    async def _before_deadline(self) -> AsyncIterator[None]:
        """Cancel what runs inside when the request's deadline passes: a 504."""
        try:
            async with asyncio.timeout(max(self._deadline - time.monotonic(), 0.0)):
                yield
        except TimeoutError:
            raise DeadlineExceededError(
                f"The transcription took longer than the server's "
                f"{self._pipeline.limits.request_timeout_s:g} s limit."
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
    """Yield results in chunk order as soon as each is ready; all calls start at once."""
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
