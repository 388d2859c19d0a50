"""Admission by projected wait: the queue, the throughput it is projected from, the
fan-out window and the deadline. Deterministic: chunk calls wait on events the test
sets, and the throughput meter runs on a clock the test moves."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.capacity import ModelCapacity, QueuePolicy, ThroughputMeter
from serve_app.engine.options import DecodeOptions
from serve_app.pipeline import PipelineLimits, PipelineObserver, TranscriptionPipeline
from serve_app.wire import ChunkJob, ChunkResult, DeadlineExceededError, OverloadedError, Word

SR = 16000


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- meter


def test_the_meter_reports_the_prior_until_it_has_evidence():
    clock = Clock()
    meter = ThroughputMeter(2.0, clock=clock, min_evidence_s=1.0)
    meter.started()
    clock.now = 0.5
    meter.finished(10.0)
    assert meter.rate == 2.0  # half a second of busy time is not evidence yet


def test_the_meter_measures_audio_per_busy_second_and_ignores_idle_time():
    clock = Clock()
    meter = ThroughputMeter(1.0, clock=clock, halflife_s=1e9)
    meter.started()
    clock.now = 2.0
    meter.finished(20.0)  # 20 s of audio in 2 busy seconds
    clock.now = 100.0  # idle: neither slower nor older
    assert meter.rate == pytest.approx(10.0)
    meter.started()
    meter.started()  # two calls overlap: busy time counts once
    clock.now = 104.0
    meter.finished(20.0)
    meter.finished(20.0)
    assert meter.rate == pytest.approx(60.0 / 6.0)


def test_the_meter_forgets_old_evidence_over_its_halflife():
    clock = Clock()
    meter = ThroughputMeter(1.0, clock=clock, halflife_s=10.0)
    meter.started()
    clock.now = 10.0
    meter.finished(100.0)  # 10x at first
    for _ in range(20):  # then 1x for 200 busy seconds
        meter.started()
        clock.now += 10.0
        meter.finished(10.0)
    assert meter.rate == pytest.approx(1.0, rel=0.01)


# --------------------------------------------------------------------------- queue


def _measured(rate: float) -> ThroughputMeter:
    """A meter that has seen one busy second decode ``rate`` seconds of audio."""
    clock = Clock()
    meter = ThroughputMeter(1000.0, clock=clock)
    meter.started()
    clock.now = 1.0
    meter.finished(rate)
    return meter


def _capacity(slots=1, queued=10, wait=30.0, rate=1.0) -> ModelCapacity:
    policy = QueuePolicy(slots=slots, max_queued=queued, max_wait_s=wait)
    return ModelCapacity(policy, _measured(rate), saturated=_measured(rate))


def test_waits_are_projected_only_from_a_rate_measured_while_saturated():
    async def run() -> None:
        unsaturated = _measured(0.001)  # slow when alone: says nothing about a queue
        capacity = ModelCapacity(QueuePolicy(slots=1, max_queued=10, max_wait_s=1.0), unsaturated)
        await capacity.acquire(100.0)
        waiter = asyncio.create_task(capacity.acquire(100.0))
        await asyncio.sleep(0)
        assert capacity.queued == 1  # not refused on the unsaturated rate
        capacity.release(100.0)
        await waiter

    asyncio.run(run())


def test_a_cold_server_queues_a_burst_instead_of_guessing():
    async def run() -> None:
        capacity = ModelCapacity(
            QueuePolicy(slots=1, max_queued=10, max_wait_s=0.0), ThroughputMeter(0.001)
        )
        await capacity.acquire(1000.0)
        waiter = asyncio.create_task(capacity.acquire(1000.0))
        await asyncio.sleep(0)
        assert capacity.queued == 1 and capacity.projected_wait_s() == 0.0
        capacity.release(1000.0)
        await waiter

    asyncio.run(run())


def test_requests_wait_in_order_for_a_slot():
    async def run() -> list[int]:
        capacity = _capacity(slots=1)
        await capacity.acquire(1.0)
        order: list[int] = []

        async def waiter(i: int) -> None:
            await capacity.acquire(1.0)
            order.append(i)
            await asyncio.sleep(0)
            capacity.release(1.0)

        tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
        await asyncio.sleep(0)
        assert capacity.queued == 5 and order == []
        capacity.release(1.0)
        await asyncio.gather(*tasks)
        assert capacity.running == 0 and capacity.queued == 0
        return order

    assert asyncio.run(run()) == [0, 1, 2, 3, 4]


def test_a_projected_wait_over_the_limit_is_refused_at_once_with_when_to_retry():
    async def run() -> OverloadedError:
        capacity = _capacity(slots=1, wait=30.0, rate=2.0)
        await capacity.acquire(50.0)  # 25 s of work at 2x
        first = asyncio.create_task(capacity.acquire(30.0))  # would wait 25 s: queued
        await asyncio.sleep(0)
        assert capacity.queued == 1
        with pytest.raises(OverloadedError) as info:  # 80 s of audio ahead: 40 s > 30 s
            await capacity.acquire(1.0)
        first.cancel()
        return info.value

    error = asyncio.run(run())
    assert error.retry_after_s == 10  # 40 s projected - 30 s allowed
    assert "projected wait is 40 s" in error.message


def test_a_full_queue_is_refused_at_once():
    async def run() -> None:
        capacity = _capacity(slots=1, queued=2, wait=1e9)
        await capacity.acquire(1.0)
        waiting = [asyncio.create_task(capacity.acquire(1.0)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError):
            await capacity.acquire(1.0)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert capacity.queued == 0

    asyncio.run(run())


def test_cancelled_waiters_never_leak_a_slot():
    async def run() -> None:
        capacity = _capacity(slots=1)
        await capacity.acquire(1.0)
        a = asyncio.create_task(capacity.acquire(1.0))
        b = asyncio.create_task(capacity.acquire(1.0))
        await asyncio.sleep(0)
        capacity.release(1.0)  # the slot goes to a ...
        a.cancel()  # ... which is cancelled before it runs: b must get it
        await asyncio.sleep(0)
        await asyncio.wait_for(b, 1)
        assert capacity.running == 1 and capacity.queued == 0
        capacity.release(1.0)
        assert capacity.running == 0 and capacity.audio_ahead_s == 0

    asyncio.run(run())


# --------------------------------------------------------------------------- pipeline


class HeldDecoder:
    """Chunk calls that finish only when the test releases them."""

    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.running = 0
        self.peak: dict[str, int] = {}
        self._gates: dict[tuple[str, int], asyncio.Event] = {}

    async def __call__(self, job: ChunkJob) -> ChunkResult:
        tag = job.options.decoding_mode
        key = (tag, job.offset_ms)
        self.started.append(key)
        self.running += 1
        gate = self._gates.setdefault(key, asyncio.Event())
        self.peak[tag] = max(self.peak.get(tag, 0), sum(1 for t, _ in self.open if t == tag))
        try:
            await gate.wait()
        finally:
            self.running -= 1
            self._gates.pop(key, None)
        return ChunkResult([Word(word=tag[:4], start=0, end=0, confidence=1)], [])

    @property
    def open(self) -> list[tuple[str, int]]:
        return list(self._gates)

    def finish(self, key: tuple[str, int]) -> None:
        self._gates.setdefault(key, asyncio.Event()).set()


def _pipeline(decoder, **limits) -> TranscriptionPipeline:
    defaults = {"max_upload_bytes": 10**9, "max_audio_seconds": 3600.0}
    defaults["max_concurrent_requests"] = limits.pop("slots", 2)
    return TranscriptionPipeline(
        decoder, limits=PipelineLimits(**defaults, **limits), model_name="m"
    )


async def _settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def _until(condition, timeout_s: float = 10.0) -> None:
    """Wait for a state the test is driving to (decoding runs in a worker thread)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "the pipeline never got there"
        await asyncio.sleep(0.005)
    await _settle()


def test_a_burst_beyond_the_slots_waits_and_every_request_succeeds():
    async def run() -> list[str]:
        pipeline = _pipeline(_instant, slots=4, max_queued_requests=30)

        async def one() -> str:
            with pipeline.admit() as admission:
                return (await admission.transcribe(np.zeros(SR * 3, np.float32), OPTS)).text

        return await asyncio.gather(*(one() for _ in range(24)))

    assert asyncio.run(run()) == ["ctc_"] * 24


OPTS = DecodeOptions(decoding_mode="ctc_greedy_search")


async def _instant(job: ChunkJob) -> ChunkResult:
    await asyncio.sleep(0.001)
    return ChunkResult([Word(word="ctc_", start=0, end=0, confidence=1)], [])


def test_one_request_keeps_at_most_its_window_of_chunks_in_flight_and_a_short_one_goes_next():
    """Pass: a 10-chunk file never has more than 2 chunk calls out; a short request that
    arrives while it runs has its chunk started before the long file's next chunk."""

    async def run(decoder: HeldDecoder) -> None:
        pipeline = _pipeline(decoder, slots=2, max_chunks_in_flight_per_request=2)
        long_file = np.zeros(int(SR * 200), np.float32)  # 10 chunks
        long_opts = DecodeOptions(decoding_mode="attention_rescoring")

        async def transcribe(audio, options):
            with pipeline.admit() as admission:
                return await admission.transcribe(audio, options)

        long_task = asyncio.create_task(transcribe(long_file, long_opts))
        await _until(lambda: len(decoder.open) == 2)
        short_task = asyncio.create_task(transcribe(np.zeros(SR * 3, np.float32), OPTS))
        await _until(lambda: len(decoder.open) == 3)
        assert ("ctc_greedy_search", 0) in decoder.open  # it did not wait behind 8 chunks
        while not long_task.done():
            for key in decoder.open:
                decoder.finish(key)
            await asyncio.sleep(0.005)
        await short_task
        assert decoder.peak["attention_rescoring"] == 2
        assert len([k for k in decoder.started if k[0] == "attention_rescoring"]) == 10

    asyncio.run(run(HeldDecoder()))


def test_the_deadline_follows_the_measured_throughput():
    """Pass: with a floor of 0.2 s, a 3 s clip whose chunk never finishes is a 504
    after about the floor, not after request_timeout_s."""

    async def run() -> float:
        decoder = HeldDecoder()
        pipeline = _pipeline(
            decoder, deadline_floor_s=0.2, deadline_factor=0.01, initial_throughput=1000.0
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DeadlineExceededError), pipeline.admit() as admission:
            await admission.transcribe(np.zeros(SR * 3, np.float32), OPTS)
        assert decoder.running == 0  # its chunk call was cancelled
        return loop.time() - started

    assert 0.15 < asyncio.run(run()) < 5.0


async def _measure_1x(pipeline: TranscriptionPipeline) -> None:
    """One real busy (and saturated) second at 1x: the rate counts as measured."""
    meters = (pipeline.throughput, pipeline.capacity.saturated)
    for meter in meters:
        meter.mark(True)
    await asyncio.sleep(1.05)
    for meter in meters:
        meter.add(1.05)
        meter.mark(False)


def test_a_refused_request_releases_everything():
    async def run() -> TranscriptionPipeline:
        decoder = HeldDecoder()
        pipeline = _pipeline(decoder, slots=1, max_queue_wait_s=0.5, initial_throughput=1.0)
        await _measure_1x(pipeline)
        first = pipeline.admit()
        held = asyncio.create_task(first.transcribe(np.zeros(SR * 10, np.float32), OPTS))
        await _until(lambda: len(decoder.open) == 1)
        with pytest.raises(OverloadedError) as info, pipeline.admit() as admission:
            await admission.transcribe(np.zeros(SR, np.float32), OPTS)
        assert info.value.retry_after_s == 10  # 10 s ahead at ~1x, 0.5 s allowed
        for key in decoder.open:
            decoder.finish(key)
        await held
        first.release()
        return pipeline

    pipeline = asyncio.run(run())
    assert pipeline.in_flight == 0 and pipeline.capacity.audio_ahead_s == 0
    assert pipeline.decoded_audio.held_seconds == 0


def test_a_request_judged_on_arrival_is_refused_after_its_upload_only_past_its_deadline():
    """The edge judges the wait before the body is read; once the upload is in, a
    request is queued even if the wait has grown past max_queue_wait_s, and refused
    only when it could not start before its own deadline."""

    async def run() -> tuple[bool, OverloadedError]:
        decoder = HeldDecoder()
        pipeline = _pipeline(
            decoder, slots=1, max_queue_wait_s=0.5, request_timeout_s=10.5,
            initial_throughput=1.0,
        )  # fmt: skip
        await _measure_1x(pipeline)
        first = pipeline.admit()
        held = asyncio.create_task(first.transcribe(np.zeros(SR * 10, np.float32), OPTS))
        await _until(lambda: len(decoder.open) == 1)
        with pytest.raises(OverloadedError):  # not judged on arrival: 10 s > 0.5 s
            pipeline.admit()
        late = pipeline.admit(wait_judged=True)  # 10 s ahead, 10.5 s to its deadline
        queued = asyncio.create_task(late.transcribe(np.zeros(SR, np.float32), OPTS))
        await _until(lambda: pipeline.capacity.queued == 1)
        with pytest.raises(OverloadedError) as info, pipeline.admit(wait_judged=True) as third:
            await third.transcribe(np.zeros(SR, np.float32), OPTS)  # 11 s ahead, < 10.5 s left
        for key in decoder.open:
            decoder.finish(key)
        await held
        first.release()  # its slot passes to the queued request
        await _until(lambda: len(decoder.open) == 1)
        for key in decoder.open:
            decoder.finish(key)
        await queued
        late.release()
        return pipeline.in_flight == 0, info.value

    all_released, refusal = asyncio.run(run())
    assert all_released
    assert refusal.retry_after_s == 1  # 11 s projected - < 10.5 s left, rounded up
    assert "projected wait is 11 s" in refusal.message


class RecordingObserver(PipelineObserver):
    def __init__(self) -> None:
        self.received: list[float] = []
        self.transcribed: list[float] = []
        self.queue: list[tuple[float, int]] = []

    def audio_received(self, seconds: float) -> None:
        self.received.append(seconds)

    def audio_transcribed(self, seconds: float) -> None:
        self.transcribed.append(seconds)

    def queue_changed(self, audio_ahead_s: float, queued: int) -> None:
        self.queue.append((audio_ahead_s, queued))


def test_the_observer_sees_audio_in_and_out_and_the_queue_as_it_changes():
    """What the Ingress's metrics are fed: every request's audio received and
    transcribed, and the queue's depth (requests and audio) at each change, back to 0."""

    async def run() -> RecordingObserver:
        observer = RecordingObserver()
        decoder = HeldDecoder()
        limits = PipelineLimits(
            max_upload_bytes=10**9, max_audio_seconds=3600.0, max_concurrent_requests=1
        )
        pipeline = TranscriptionPipeline(decoder, limits=limits, model_name="m", observer=observer)

        async def one(seconds: int) -> None:
            with pipeline.admit() as admission:
                await admission.transcribe(np.zeros(SR * seconds, np.float32), OPTS)

        first = asyncio.create_task(one(30))
        await _until(lambda: len(decoder.open) == 2)  # both chunks of the 30 s file
        second = asyncio.create_task(one(5))
        await _until(lambda: pipeline.capacity.queued == 1)
        while not (first.done() and second.done()):
            for key in decoder.open:
                decoder.finish(key)
            await asyncio.sleep(0.01)
        return observer

    observer = asyncio.run(run())
    assert sorted(observer.received) == [5.0, 30.0]
    assert sorted(observer.transcribed) == [5.0, 30.0]
    assert max(q for _, q in observer.queue) == 1  # one slot: the second request waited
    assert max(a for a, _ in observer.queue) == 35.0
    assert observer.queue[-1] == (0.0, 0)
