"""The request pipeline without Ray or HTTP: admission, fan-out, ordering, cancellation.

The HTTP routes and the Serve handle both run this code, so what is pinned here holds
for both entry points.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.engine.options import DecodeOptions
from serve_app.pipeline import PipelineLimits, TranscriptionPipeline, text_delta
from serve_app.request_options import parse_request_options
from serve_app.wire import (
    ChunkJob,
    ChunkResult,
    DeadlineExceededError,
    InvalidRequestError,
    OverloadedError,
    PayloadTooLargeError,
    Word,
)

PROPERTY = settings(deadline=None, database=None, max_examples=60)


def _pipeline(
    decode,
    *,
    concurrent: int = 2,
    upload: int = 1_000_000,
    timeout: float = 900.0,
    queued: int = 0,
    **limits_: float,
) -> TranscriptionPipeline:
    limits = PipelineLimits(
        max_upload_bytes=upload,
        max_audio_seconds=120.0,
        max_concurrent_requests=concurrent,
        request_timeout_s=timeout,
        max_queued_requests=queued,
        **limits_,
    )
    return TranscriptionPipeline(decode, limits=limits, model_name="m")


async def _echo(job: ChunkJob) -> ChunkResult:
    start = job.offset_ms / 1000
    return ChunkResult([Word(word=f"at{job.offset_ms}", start=start, end=start, confidence=1)], [])


@PROPERTY
@given(st.lists(st.lists(st.text(st.characters(categories=["L"]), min_size=1), max_size=4)))
def test_deltas_concatenate_to_the_final_text(chunks):
    text = ""
    for words in chunks:
        text += text_delta(text, " ".join(words))
    assert text == " ".join(word for words in chunks for word in words)


def test_admission_is_bounded_and_release_is_idempotent():
    pipeline = _pipeline(_echo, concurrent=2)
    first = pipeline.admit()
    with pipeline.admit():
        assert pipeline.in_flight == 2
        with pytest.raises(OverloadedError):
            pipeline.admit()
    first.release()
    first.release()
    assert pipeline.in_flight == 0


def test_a_whole_request_merges_chunks_in_order():
    pipeline = _pipeline(_echo)
    samples = np.zeros(16000 * 45, np.float32)  # three chunks

    async def run():
        with pipeline.admit() as admission:
            return await admission.transcribe(samples, DecodeOptions())

    transcript = asyncio.run(run())
    assert transcript.text == "at0 at20510 at41020"
    assert transcript.duration == pytest.approx(45.0)
    assert pipeline.in_flight == 0


def test_oversize_bytes_are_refused_before_decoding():
    pipeline = _pipeline(_echo, upload=10)

    async def run():
        with pipeline.admit() as admission:
            await admission.plan(b"x" * 11, DecodeOptions())

    with pytest.raises(PayloadTooLargeError):
        asyncio.run(run())


@pytest.mark.parametrize("audio", [None, "a.wav", [0.0, 0.1], 3])
def test_audio_of_another_type_is_a_400(audio):
    pipeline = _pipeline(_echo)

    async def run():
        with pipeline.admit() as admission:
            await admission.plan(audio, DecodeOptions())

    with pytest.raises(InvalidRequestError) as info:
        asyncio.run(run())
    assert info.value.param == "audio"
    assert pipeline.in_flight == 0


def test_the_first_failure_cancels_the_other_chunk_calls():
    started: list[int] = []
    cancelled: list[int] = []

    async def decode(job: ChunkJob) -> ChunkResult:
        started.append(job.offset_ms)
        try:
            if job.offset_ms == 0:
                raise OverloadedError("full")
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(job.offset_ms)
            raise
        return ChunkResult(words=[], tokens=[])

    pipeline = _pipeline(decode)
    samples = np.zeros(16000 * 70, np.float32)  # four chunks

    async def run() -> None:
        with pipeline.admit() as admission, pytest.raises(OverloadedError):
            await admission.transcribe(samples, DecodeOptions())
        await asyncio.sleep(0)

    asyncio.run(run())
    assert len(started) == 4
    assert sorted(cancelled) == sorted(started)[1:]


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"beam_size": 0}, "beam_size"),
        ({"verbatimicity": float("nan")}, "verbatimicity"),
        ({"decoding_mode": "beam"}, "decoding_mode"),
        ({"speed": 2}, "speed"),
        ({"language": "de"}, "language"),
    ],
)
def test_handle_option_errors_name_the_field(options, param):
    with pytest.raises(InvalidRequestError) as info:
        parse_request_options(options)
    assert info.value.param == param
    assert info.value.status_code == 400


def test_handle_options_accept_english_and_drop_the_language():
    assert parse_request_options({"language": "en-GB", "beam_size": 4}) == DecodeOptions(
        beam_size=4
    )


def _stuck_after_first(started: list[int], cancelled: list[int]):
    async def decode(job: ChunkJob) -> ChunkResult:
        started.append(job.offset_ms)
        try:
            if job.offset_ms:
                await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(job.offset_ms)
            raise
        return await _echo(job)

    return decode


@pytest.mark.parametrize("streamed", [False, True])
def test_the_servers_deadline_cancels_the_chunk_calls_and_is_a_504(streamed):
    started: list[int] = []
    cancelled: list[int] = []
    pipeline = _pipeline(_stuck_after_first(started, cancelled), timeout=0.2)
    samples = np.zeros(16000 * 45, np.float32)  # three chunks

    async def run() -> list[str]:
        seen: list[str] = []
        with pipeline.admit() as admission:
            plan = await admission.plan(samples, DecodeOptions())
            if streamed:
                async for result in admission.results_in_order(plan):
                    seen.append(result.text)
            else:
                await admission.transcript(plan)
        return seen

    with pytest.raises(DeadlineExceededError) as info:
        asyncio.run(run())
    assert info.value.status_code == 504
    assert sorted(cancelled) == [20510, 41020]
    assert pipeline.in_flight == 0


def test_decoded_audio_is_budgeted_across_requests_and_returned():
    limits = PipelineLimits(
        max_upload_bytes=10**9,
        max_audio_seconds=60.0,
        max_concurrent_requests=4,
        max_decoded_audio_seconds=60.0,
    )
    pipeline = TranscriptionPipeline(_echo, limits=limits, model_name="m")
    samples = np.zeros(16000 * 45, np.float32)

    async def run() -> None:
        first = pipeline.admit()
        await first.plan(samples, DecodeOptions())
        assert pipeline.decoded_audio.held_seconds == pytest.approx(45.0)
        with pipeline.admit() as second, pytest.raises(OverloadedError, match="decoded audio"):
            await second.plan(samples, DecodeOptions())
        first.release()
        assert pipeline.decoded_audio.held_seconds == 0.0
        with pipeline.admit() as third:
            await third.plan(samples, DecodeOptions())

    asyncio.run(run())
    assert pipeline.decoded_audio.held_seconds == 0.0
