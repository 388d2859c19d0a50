"""Plan a request's chunks, fan them out to a decoder and gather them back, without Ray.

The Ingress passes a ``decode_chunk`` coroutine that sends one chunk through a
Serve handle; tests can pass a local one. Each chunk is its own call so that chunks
of one long file land on every replica and share batches with other requests.
Results come back in chunk order however the calls finish, and the first failure
cancels the calls still pending so a doomed request stops using the GPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from serve_app.engine.audio import as_waveform, duration_seconds
from serve_app.engine.decoder import ChunkJob, ChunkResult
from serve_app.engine.formats import make_transcript
from serve_app.engine.options import DecodeOptions
from serve_app.engine.transcriber import chunk_jobs, merge_chunks
from serve_app.engine.types import Transcript

ChunkDecoder = Callable[[ChunkJob], Awaitable[ChunkResult]]
"""Decodes one chunk; raises the chunk's error."""


@dataclass(frozen=True)
class Plan:
    """A request after its audio decoded: the chunk calls to make and what to report."""

    jobs: list[ChunkJob]
    duration: float
    options: DecodeOptions


def plan_request(audio: bytes | np.ndarray, options: DecodeOptions, *, max_seconds: float) -> Plan:
    """Decode the upload and cut it on Rev's chunk grid. CPU-bound: run it in a thread.

    Raises the engine's typed audio errors (415 undecodable, 413 too long, 400 empty).
    Chunks are views of one waveform; pickling a view sends only its own samples.
    """
    waveform = as_waveform(audio, max_seconds=max_seconds)
    jobs = chunk_jobs(waveform, options)
    return Plan(jobs=jobs, duration=duration_seconds(waveform), options=options)


def _start(jobs: Sequence[ChunkJob], decode_chunk: ChunkDecoder) -> list[asyncio.Future]:
    return [asyncio.ensure_future(decode_chunk(job)) for job in jobs]


def _stop(tasks: list[asyncio.Future]) -> None:
    """Cancel what is still running and mark finished failures as seen (no log noise)."""
    for task in tasks:
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()


async def decode_all(jobs: Sequence[ChunkJob], decode_chunk: ChunkDecoder) -> list[ChunkResult]:
    """Every chunk's result in order; raises the first chunk error."""
    tasks = _start(jobs, decode_chunk)
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        _stop(tasks)


async def decode_in_order(
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
