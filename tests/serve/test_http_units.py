"""The HTTP layer and its helpers without Ray: a fake service stands in for the model.

These pin down behaviour the integration tests cannot observe directly: that a
declared oversize body is refused before one byte is read, that a chunked one stops
being read once it crosses the limit, that stream deltas come in chunk order even
when chunks finish out of order, and that slots are always released.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serve_helpers import assert_openai_error
from starlette.datastructures import FormData, UploadFile
from starlette.testclient import TestClient

from serve_app.engine.decoder import ChunkJob, ChunkResult
from serve_app.engine.errors import AudioDecodeError, InvalidRequestError, OverloadedError
from serve_app.engine.options import DecodeOptions
from serve_app.engine.types import Transcript, Word
from serve_app.serve.config import AppConfig
from serve_app.serve.errors import ChunkDecodeError, UnavailableError
from serve_app.serve.form import parse_options, parse_transcription_form
from serve_app.serve.http_api import build_http_app
from serve_app.serve.limits import ConcurrencyLimiter
from serve_app.serve.pipeline import (
    Plan,
    decode_all,
    decode_in_order,
    text_delta,
    transcript_from_chunks,
)

PROPERTY = settings(deadline=None, database=None, max_examples=60)
LIMIT = 10_000


class FakeService:
    """Audio ``b"chunks:N"`` becomes N chunks; chunk i finishes after (N - i) ticks, so
    the last chunk is ready first. ``b"bad"`` is undecodable, ``b"boom"`` is a bug."""

    def __init__(self, **config: Any) -> None:
        self.config = AppConfig(model="fake", max_upload_bytes=LIMIT, **config)
        self.api_key = self.config.resolve_api_key()
        self.limiter = ConcurrencyLimiter(self.config.max_concurrent_requests)
        self.started_at = 0
        self.observed: list[tuple[str, int]] = []
        self.fail_chunk: int | None = None
        self.ready = True

    async def plan(self, audio: bytes, options: DecodeOptions) -> Plan:
        if audio == b"bad":
            raise AudioDecodeError("not audio", param="file")
        if audio == b"boom":
            raise RuntimeError("a bug")
        count = int(audio.split(b":")[1])
        jobs = [ChunkJob(np.zeros(1, np.float32), 20_000 * i, options) for i in range(count)]
        return Plan(jobs=jobs, duration=20.0 * count, options=options)

    async def _decode(self, job: ChunkJob) -> ChunkResult:
        index = job.offset_ms // 20_000
        await asyncio.sleep(0.01 * (10 - index))
        if index == self.fail_chunk:
            raise ChunkDecodeError("model failed")
        start = index * 20.0
        return ChunkResult(
            words=[Word(word=f"w{index}", start=start, end=start + 1, confidence=0.9)],
            tokens=[index],
        )

    async def complete(self, plan: Plan) -> Transcript:
        return transcript_from_chunks(await decode_all(plan.jobs, self._decode), plan, model="m")

    async def results_in_order(self, plan: Plan) -> AsyncIterator[ChunkResult]:
        async for result in decode_in_order(plan.jobs, self._decode):
            yield result

    async def readiness(self) -> dict[str, Any]:
        if not self.ready:
            raise UnavailableError("not ready")
        return {"model": "m"}

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.observed.append((route, status))


def _client(service: FakeService) -> TestClient:
    return TestClient(build_http_app(service), raise_server_exceptions=False)


def _post(client: TestClient, audio: bytes, **data: str):
    return client.post(
        "/v1/audio/transcriptions", files={"file": ("a.wav", audio, "audio/wav")}, data=data
    )


# --------------------------------------------------------------------------- transcription


def test_json_and_text_formats():
    client = _client(FakeService())
    assert _post(client, b"chunks:3").json() == {"text": "w0 w1 w2"}
    text = _post(client, b"chunks:2", response_format="text")
    assert text.text == "w0 w1\n"
    assert text.headers["content-type"].startswith("text/plain")


def test_stream_deltas_come_in_chunk_order_and_release_the_slot():
    service = FakeService()
    response = _post(_client(service), b"chunks:4", stream="true")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.split("\n\n") if line]
    assert [e.get("delta") for e in events[:-1]] == ["w0", " w1", " w2", " w3"]
    assert events[-1] == {"type": "transcript.text.done", "text": "w0 w1 w2 w3"}
    assert service.limiter.in_flight == 0


def test_a_chunk_failing_mid_stream_sends_an_error_event():
    service = FakeService()
    service.fail_chunk = 2
    response = _post(_client(service), b"chunks:4", stream="true")
    events = [json.loads(line[6:]) for line in response.text.split("\n\n") if line]
    assert [e["delta"] for e in events[:-1]] == ["w0", " w1"]
    assert events[-1]["error"]["code"] == "decode_failed"
    assert service.limiter.in_flight == 0


def test_a_chunk_failing_fails_the_request_with_its_status():
    service = FakeService()
    service.fail_chunk = 1
    assert_openai_error(_post(_client(service), b"chunks:3"), 500)
    assert service.limiter.in_flight == 0


def test_a_bug_is_a_500_in_openai_shape_without_details():
    service = FakeService()
    error = assert_openai_error(_post(_client(service), b"boom"), 500)
    assert "a bug" not in error["message"]
    assert service.limiter.in_flight == 0


def test_bad_audio_is_415_and_frees_the_slot():
    service = FakeService()
    assert_openai_error(_post(_client(service), b"bad"), 415, param="file")
    assert service.limiter.in_flight == 0


def test_over_the_limit_is_503_with_retry_after():
    service = FakeService(max_concurrent_requests=1, retry_after_s=7)
    held = service.limiter.acquire()
    response = _post(_client(service), b"chunks:1")
    assert_openai_error(response, 503)
    assert response.headers["retry-after"] == "7"
    held.release()
    assert _post(_client(service), b"chunks:1").status_code == 200


def test_readyz_reports_503_when_the_model_is_not_ready():
    service = FakeService()
    client = _client(service)
    assert client.get("/readyz").json()["status"] == "ready"
    service.ready = False
    response = client.get("/readyz")
    assert_openai_error(response, 503)
    assert "retry-after" in response.headers


def test_requests_are_observed_by_route_and_status():
    service = FakeService()
    client = _client(service)
    client.get("/healthz")
    client.get("/v1/models/abc")
    client.get("/elsewhere")
    assert service.observed == [("/healthz", 200), ("/v1/models/{id}", 404), ("other", 404)]


# --------------------------------------------------------------------------- upload limit (ASGI)


def _scope(headers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/audio/transcriptions",
        "raw_path": b"/v1/audio/transcriptions",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


async def _call(app, scope, bodies: list[bytes]) -> tuple[int, dict, int]:
    """Run one ASGI request; return status, JSON body and how many receives happened."""
    reads = 0
    sent: list[dict] = []

    async def receive():
        nonlocal reads
        reads += 1
        if reads <= len(bodies):
            return {
                "type": "http.request",
                "body": bodies[reads - 1],
                "more_body": reads < len(bodies),
            }
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), reads


def test_declared_oversize_body_is_refused_before_reading():
    app = build_http_app(FakeService())
    headers = {
        "content-type": "multipart/form-data; boundary=x",
        "content-length": str(LIMIT + 1),
    }
    status, body, reads = asyncio.run(_call(app, _scope(headers), [b"x" * (LIMIT + 1)]))
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert reads == 0


def test_chunked_oversize_body_stops_being_read_at_the_limit():
    app = build_http_app(FakeService())
    head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    pieces = [head] + [b"\x00" * 1000] * 50  # 50 kB against a 10 kB limit
    headers = {"content-type": "multipart/form-data; boundary=x"}
    status, body, reads = asyncio.run(_call(app, _scope(headers), pieces))
    assert status == 413 and body["error"]["param"] == "file"
    assert reads <= LIMIT // 1000 + 2


# --------------------------------------------------------------------------- auth and CORS


def test_api_key_guards_v1_only():
    client = _client(FakeService(api_key="k"))
    assert_openai_error(client.get("/v1/models"), 401)
    assert_openai_error(client.get("/v1/models", headers={"Authorization": "Basic k"}), 401)
    assert client.get("/v1/models", headers={"Authorization": "Bearer k"}).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("TEST_REVERB_KEY", "from-env")
    client = _client(FakeService(api_key_env="TEST_REVERB_KEY"))
    headers = {"Authorization": "Bearer from-env"}
    assert client.get("/v1/models", headers=headers).status_code == 200
    monkeypatch.delenv("TEST_REVERB_KEY")
    with pytest.raises(RuntimeError, match="TEST_REVERB_KEY"):
        FakeService(api_key_env="TEST_REVERB_KEY")


def test_no_cors_headers_without_an_allowlist():
    response = _client(FakeService()).get("/healthz", headers={"Origin": "http://a.example"})
    assert "access-control-allow-origin" not in response.headers


# --------------------------------------------------------------------------- form parsing


def _form(**fields: Any) -> FormData:
    items = [(k, v) for k, v in fields.items()]
    return FormData(items)


def _upload() -> UploadFile:
    import io

    return UploadFile(io.BytesIO(b"audio"), filename="dir/clip.wav")


@pytest.mark.parametrize("language", ["en", "EN", "en-US", "english", ""])
def test_english_is_accepted(language):
    form = _form(file=_upload(), language=language)
    parsed = asyncio.run(parse_transcription_form(form, model_ids=["m"], default_model="m"))
    assert parsed.filename == "clip.wav" and parsed.audio == b"audio"


def test_defaults():
    parsed = asyncio.run(
        parse_transcription_form(_form(file=_upload()), model_ids=["m"], default_model="m")
    )
    assert parsed.response_format == "json"
    assert parsed.timestamp_granularities == {"segment"}
    assert parsed.stream is False
    assert parsed.options == DecodeOptions()


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"beam_size": 0}, "beam_size"),
        ({"verbatimicity": float("nan")}, "verbatimicity"),
        ({"decoding_mode": "beam"}, "decoding_mode"),
        ({"speed": 2}, "speed"),
    ],
)
def test_option_errors_name_the_field(options, param):
    with pytest.raises(InvalidRequestError) as info:
        parse_options(options)
    assert info.value.param == param
    assert info.value.status_code == 400


# --------------------------------------------------------------------------- pipeline pieces


@PROPERTY
@given(st.lists(st.lists(st.text(st.characters(categories=["L"]), min_size=1), max_size=4)))
def test_deltas_concatenate_to_the_final_text(chunks):
    text = ""
    for words in chunks:
        text += text_delta(text, " ".join(words))
    assert text == " ".join(word for words in chunks for word in words)


def test_decode_all_cancels_the_rest_after_a_failure():
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

    jobs = [ChunkJob(np.zeros(1), i, DecodeOptions()) for i in range(4)]

    async def run() -> None:
        with pytest.raises(OverloadedError):
            await decode_all(jobs, decode)
        await asyncio.sleep(0)

    asyncio.run(run())
    assert sorted(started) == [0, 1, 2, 3]
    assert sorted(cancelled) == [1, 2, 3]


def test_limiter_slots():
    limiter = ConcurrencyLimiter(2)
    a = limiter.acquire()
    with limiter.slot():
        assert limiter.in_flight == 2
        with pytest.raises(OverloadedError):
            limiter.acquire()
    a.release()
    a.release()  # idempotent
    assert limiter.in_flight == 0


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"--x\r\nrandom"),
        ("multipart/form-data; boundary=x", b"garbage without any boundary"),
        ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="fi'),
        ("multipart/form-data; boundary=x", b"--x--\r\n"),
        ("application/octet-stream", b"RIFF...."),
    ],
)
def test_malformed_requests_are_4xx_never_500(content_type, body):
    client = _client(FakeService())
    response = client.post(
        "/v1/audio/transcriptions", content=body, headers={"Content-Type": content_type}
    )
    assert 400 <= response.status_code < 500, response.text
    assert_openai_error(response, response.status_code)
