"""The Transcriber's health logic and the Ingress's mapping of Ray failures, without a
cluster: the real deployment class, driven with a fake decoder and a fake handle.

A replica that Serve keeps routing to after its device broke fails every request it
gets; these tests pin when ``check_health`` raises (so Serve replaces the replica) and
when it must not (a bad row is the caller's problem, not the replica's).
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

from serve_app.engine.decoder import BatchReport
from serve_app.engine.options import DecodeOptions
from serve_app.serve import transcriber_deployment as td
from serve_app.serve.config import AppConfig
from serve_app.serve.ingress import decode_via
from serve_app.wire import (
    AudioDecodeError,
    ChunkDecodeError,
    ChunkJob,
    ChunkResult,
    OverloadedError,
    UnavailableError,
)

JOB = ChunkJob(np.zeros(1600, np.float32), 0, DecodeOptions())


class FakeDecoder:
    """Returns what ``outcome`` says for every row and counts the calls."""

    def __init__(self) -> None:
        self.model = SimpleNamespace(name="fake", device="cpu", num_parameters=lambda: 7)
        self.outcome: Any = ChunkResult(words=[], tokens=[])
        self.calls = 0

    def decode(self, jobs: list[ChunkJob]) -> tuple[list[Any], BatchReport]:
        self.calls += 1
        outcomes = [self.outcome] * len(jobs)
        failed = sum(isinstance(o, Exception) for o in outcomes)
        return outcomes, BatchReport(rows=len(jobs), failed_rows=failed)


def _transcriber() -> tuple[Any, FakeDecoder]:
    decoder = FakeDecoder()
    return td.Transcriber.func_or_class(AppConfig(model="fake"), decoder=decoder), decoder


def _batch(transcriber: Any, rows: int = 2) -> list[Any]:
    return asyncio.run(transcriber._run_batch([JOB] * rows))


def test_a_fatal_device_error_fails_fast_and_makes_the_replica_unhealthy_for_good():
    """Pass: the batch's rows are retryable 503s without internal detail; later batches
    fail at once without touching the device; the health check raises from then on."""
    transcriber, decoder = _transcriber()
    decoder.outcome = RuntimeError("CUDA error: device-side assert triggered")
    outcomes = _batch(transcriber)
    assert all(isinstance(o, UnavailableError) and o.status_code == 503 for o in outcomes)
    assert all("CUDA" not in o.message for o in outcomes)  # internal detail stays here
    decoder.outcome = ChunkResult(words=[], tokens=[])
    later = _batch(transcriber, rows=3)  # no retry storm: the device is not used again
    assert decoder.calls == 1 and all(isinstance(o, UnavailableError) for o in later)
    with pytest.raises(RuntimeError, match="device error"):
        asyncio.run(transcriber.check_health())


def test_consecutive_all_failed_batches_make_it_unhealthy():
    transcriber, decoder = _transcriber()
    decoder.outcome = RuntimeError("something odd")
    for _ in range(td.FAILED_BATCHES_UNHEALTHY - 1):
        _batch(transcriber)
    asyncio.run(transcriber.check_health())  # not yet
    _batch(transcriber)
    with pytest.raises(RuntimeError, match="batches failed"):
        asyncio.run(transcriber.check_health())


def test_a_success_resets_the_failure_count():
    transcriber, decoder = _transcriber()
    for _ in range(td.FAILED_BATCHES_UNHEALTHY - 1):
        decoder.outcome = RuntimeError("odd")
        _batch(transcriber)
    decoder.outcome = ChunkResult(words=[], tokens=[])
    _batch(transcriber)
    decoder.outcome = RuntimeError("odd")
    _batch(transcriber)
    asyncio.run(transcriber.check_health())


def test_caller_errors_are_returned_as_they_are_and_do_not_count():
    transcriber, decoder = _transcriber()
    decoder.outcome = AudioDecodeError("bad row", param="file")
    for _ in range(td.FAILED_BATCHES_UNHEALTHY + 1):
        outcomes = _batch(transcriber, rows=1)
    assert isinstance(outcomes[0], AudioDecodeError) and outcomes[0].param == "file"
    asyncio.run(transcriber.check_health())  # bad rows cannot get a replica restarted


def test_an_idle_replica_probes_with_one_forward():
    transcriber, decoder = _transcriber()
    asyncio.run(transcriber.check_health())
    assert decoder.calls == 0  # recently started: no probe
    transcriber._stats.last_success_at = time.monotonic() - td.PROBE_AFTER_IDLE_S - 1
    asyncio.run(transcriber.check_health())
    assert decoder.calls == 1
    asyncio.run(transcriber.check_health())
    assert decoder.calls == 1  # the probe counted as a success


def test_a_failing_probe_is_unhealthy_and_a_fatal_one_stays_so():
    transcriber, decoder = _transcriber()
    transcriber._stats.last_success_at = time.monotonic() - td.PROBE_AFTER_IDLE_S - 1
    decoder.outcome = RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED")
    with pytest.raises(RuntimeError, match="probe"):
        asyncio.run(transcriber.check_health())
    decoder.outcome = ChunkResult(words=[], tokens=[])
    with pytest.raises(RuntimeError, match="device error"):
        asyncio.run(transcriber.check_health())


def test_ready_reports_the_model():
    transcriber, _ = _transcriber()
    assert asyncio.run(transcriber.ready()) == {"model": "fake", "device": "cpu", "parameters": 7}


# --------------------------------------------------------------------------- Ray -> HTTP


class FakeHandle:
    """``handle.decode.remote(job)`` that raises or returns ``result`` (then ``then``)."""

    def __init__(self, result: Any, then: Any = None) -> None:
        self.decode = SimpleNamespace(remote=lambda job: self._respond())
        self._results = [result] if then is None else [result, then]
        self.calls = 0

    async def _respond(self) -> Any:
        result = self._results[min(self.calls, len(self._results) - 1)]
        self.calls += 1
        if isinstance(result, BaseException):
            raise result
        return result


def _task_error() -> RayTaskError:
    return RayTaskError("decode", "Traceback: secret", ValueError("secret"))


@pytest.mark.parametrize(
    ("raised", "expected", "status"),
    [
        (BackPressureError(num_queued_requests=9, max_queued_requests=8), OverloadedError, 503),
        (ReplicaUnavailableError("r1"), UnavailableError, 503),
        (RayActorError(), UnavailableError, 503),
        (_task_error(), ChunkDecodeError, 500),
        (AudioDecodeError("bad", param="file"), AudioDecodeError, 415),
        ("not a result", ChunkDecodeError, 500),
    ],
)
def test_ray_failures_become_typed_errors(raised, expected, status):
    with pytest.raises(expected) as info:
        asyncio.run(decode_via(FakeHandle(raised), JOB))
    assert info.value.status_code == status
    assert "secret" not in info.value.message


def test_a_result_passes_through():
    result = ChunkResult(words=[], tokens=[3])
    assert asyncio.run(decode_via(FakeHandle(result), JOB)) is result


@pytest.mark.parametrize(
    "first", [RayActorError(), ReplicaUnavailableError("r1"), UnavailableError("device lost")]
)
def test_a_chunk_whose_replica_died_is_sent_once_more(first):
    result = ChunkResult(words=[], tokens=[3])
    handle = FakeHandle(first, then=result)
    retries: list[None] = []
    assert asyncio.run(decode_via(handle, JOB, lambda: retries.append(None))) is result
    assert handle.calls == 2 and len(retries) == 1  # counted for the metric


def test_a_chunk_is_retried_only_once_and_never_for_other_errors():
    dead = FakeHandle(RayActorError())
    with pytest.raises(UnavailableError):
        asyncio.run(decode_via(dead, JOB))
    assert dead.calls == 2
    for error in (BackPressureError(num_queued_requests=9, max_queued_requests=8), _task_error()):
        handle = FakeHandle(error, then=ChunkResult(words=[], tokens=[]))
        with pytest.raises((OverloadedError, ChunkDecodeError)):
            asyncio.run(decode_via(handle, JOB))
        assert handle.calls == 1
