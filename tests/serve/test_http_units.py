"""The HTTP layer without Ray: the real FastAPI app and the real request pipeline, with
a local chunk decoder standing in for the Transcriber handle.

These pin down what the integration tests cannot observe directly: that a declared
oversize body is refused before one byte is read, that a chunked one stops being read
once it crosses the limit, that stream deltas come in chunk order even when chunks
finish out of order, that admissions are always released, and that every answer,
FastAPI's own included, is in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_helpers import assert_openai_error, multipart_file

from serve_app.serve.http_api import create_http_app
from tests.fake_backend import FakeBackend, chunks_audio

LIMIT = 10_000


def _client(backend: FakeBackend) -> TestClient:
    return TestClient(create_http_app(lambda: backend), raise_server_exceptions=False)


def _post(client: TestClient, audio: bytes, **data: Any):
    return client.post(
        "/v1/audio/transcriptions", files={"file": ("a.wav", audio, "audio/wav")}, data=data
    )


# --------------------------------------------------------------------------- transcription


def test_json_and_text_formats():
    client = _client(FakeBackend())
    assert _post(client, chunks_audio(3)).json() == {"text": "w0 w1 w2"}
    text = _post(client, chunks_audio(2), response_format="text")
    assert text.text == "w0 w1\n"
    assert text.headers["content-type"].startswith("text/plain")


def test_granularities_as_the_sdk_sends_them_and_comma_separated():
    client = _client(FakeBackend())
    data = {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]}
    body = _post(client, chunks_audio(2), **data).json()
    assert [w["word"] for w in body["words"]] == ["w0", "w1"] and body["segments"]
    body = _post(client, chunks_audio(1), response_format="verbose_json").json()
    assert "segments" in body and "words" not in body
    data = {"response_format": "verbose_json", "timestamp_granularities": "word,segment"}
    body = _post(client, chunks_audio(1), **data).json()
    assert "segments" in body and "words" in body
    bad = {"timestamp_granularities[]": "sentence"}
    assert_openai_error(_post(client, chunks_audio(1), **bad), 400, param="timestamp_granularities")


def test_stream_deltas_come_in_chunk_order_and_release_the_admission():
    backend = FakeBackend()
    response = _post(_client(backend), chunks_audio(4), stream="true")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.split("\n\n") if line]
    assert [e.get("delta") for e in events[:-1]] == ["w0", " w1", " w2", " w3"]
    assert events[-1] == {"type": "transcript.text.done", "text": "w0 w1 w2 w3"}
    assert backend.pipeline.in_flight == 0
    assert len(backend.first_deltas) == 1 and backend.first_deltas[0] > 0  # the metric


def test_a_verbose_json_stream_ends_with_the_body_the_plain_request_returns():
    """The Reverb extension the browser page uses: deltas as chunks finish, and the
    done event's ``transcription`` equal to a non-streamed verbose_json response."""
    client = _client(FakeBackend())
    data = {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]}
    plain = _post(client, chunks_audio(3), **data).json()
    response = _post(client, chunks_audio(3), stream="true", **data)
    events = [json.loads(line[6:]) for line in response.text.split("\n\n") if line]
    assert [e.get("delta") for e in events[:-1]] == ["w0", " w1", " w2"]
    done = events[-1]
    assert done["type"] == "transcript.text.done" and done["text"] == plain["text"]
    assert done["transcription"] == plain
    json_stream = _post(client, chunks_audio(1), stream="true", response_format="json")
    assert "transcription" not in json.loads(json_stream.text.split("\n\n")[-2][6:])


def test_a_chunk_failing_mid_stream_sends_an_error_event():
    backend = FakeBackend()
    backend.fail_chunk = 2
    response = _post(_client(backend), chunks_audio(4), stream="true")
    events = [json.loads(line[6:]) for line in response.text.split("\n\n") if line]
    assert [e["delta"] for e in events[:-1]] == ["w0", " w1"]
    assert events[-1]["error"]["code"] == "decode_failed"
    assert backend.pipeline.in_flight == 0


def test_a_chunk_failing_fails_the_request_with_its_status():
    backend = FakeBackend()
    backend.fail_chunk = 1
    assert_openai_error(_post(_client(backend), chunks_audio(3)), 500)
    assert backend.pipeline.in_flight == 0


def test_a_bug_is_a_500_with_a_request_id_and_no_details(caplog):
    backend = FakeBackend()
    backend.bug = True
    client = _client(backend)
    response = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", chunks_audio(1), "audio/wav")},
        headers={"x-request-id": "req-42"},
    )
    error = assert_openai_error(response, 500)
    assert "secret" not in error["message"]
    assert "req-42" in error["message"]
    assert any("req-42" in r.getMessage() for r in caplog.records)
    assert backend.pipeline.in_flight == 0
    odd = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", chunks_audio(1), "audio/wav")},
        headers={"x-request-id": "evil\nFAKE LOG LINE"},
    )
    message = assert_openai_error(odd, 500)["message"]
    assert "FAKE" not in message and "request id " in message


def test_bad_audio_is_415_and_releases_the_admission():
    backend = FakeBackend()
    assert_openai_error(_post(_client(backend), b"not audio at all"), 415, param="file")
    assert backend.pipeline.in_flight == 0


def test_unknown_model_and_aliases():
    client = _client(FakeBackend())
    assert _post(client, chunks_audio(1), model="whisper-1").status_code == 200
    assert _post(client, chunks_audio(1), model="fake").status_code == 200
    error = assert_openai_error(_post(client, chunks_audio(1), model="gpt-9"), 404, param="model")
    assert error["code"] == "model_not_found"


@pytest.mark.parametrize("language", ["en", "EN", "en-US", "english", ""])
def test_english_is_accepted(language):
    assert _post(_client(FakeBackend()), chunks_audio(1), language=language).status_code == 200


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"beam_size": "0"}, "beam_size"),
        ({"verbatimicity": "nan"}, "verbatimicity"),
        ({"decoding_mode": "beam"}, "decoding_mode"),
        ({"speed": "2"}, "speed"),
        ({"language": "fr"}, "language"),
        ({"temperature": "2"}, "temperature"),
        ({"stream": "maybe"}, "stream"),
        ({"response_format": "xml"}, "response_format"),
    ],
)
def test_option_errors_are_400_naming_the_field(data, param):
    error = assert_openai_error(_post(_client(FakeBackend()), b"x", **data), 400, param=param)
    assert error["type"] == "invalid_request_error"


def test_a_missing_or_text_file_field_is_400():
    client = _client(FakeBackend())
    response = client.post(
        "/v1/audio/transcriptions",
        files={"model": (None, "whisper-1")},
    )
    error = assert_openai_error(response, 400, param="file")
    assert error["code"] == "missing_required_parameter"
    response = client.post("/v1/audio/transcriptions", files={"file": (None, "text")})
    assert_openai_error(response, 400, param="file")


def test_over_the_limit_is_503_with_retry_after():
    backend = FakeBackend(max_concurrent_requests=1, max_queued_requests=0, retry_after_s=7)
    held = backend.pipeline.admit()
    response = _post(_client(backend), chunks_audio(1))
    assert_openai_error(response, 503)
    assert response.headers["retry-after"] == "7"
    held.release()
    assert _post(_client(backend), chunks_audio(1)).status_code == 200


def test_readyz_reports_503_when_the_model_is_not_ready():
    backend = FakeBackend()
    client = _client(backend)
    assert client.get("/readyz").json()["status"] == "ready"
    backend.ready = False
    response = client.get("/readyz")
    assert_openai_error(response, 503)
    assert "retry-after" in response.headers


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "models/../demo",
        "x" * 5000,
        "d\u0435mo",  # Cyrillic e
        "demo\u200b",
        "%00",
    ],
)
def test_model_names_are_looked_up_never_joined_into_paths(name):
    client = _client(FakeBackend())
    error = assert_openai_error(client.get(f"/v1/models/{name}"), 404)
    assert len(error["message"]) < 200
    error = assert_openai_error(_post(client, chunks_audio(1), model=name), 404, param="model")
    assert len(error["message"]) < 200


def test_frameworks_own_errors_are_openai_shaped():
    client = _client(FakeBackend())
    assert_openai_error(client.get("/nowhere"), 404)
    assert_openai_error(client.get("/v1/audio/transcriptions"), 405)
    assert_openai_error(client.get("/v1/models/abc"), 404, param="model")


def test_requests_are_observed_by_route_template_and_status():
    backend = FakeBackend()
    client = _client(backend)
    client.get("/healthz")
    client.get("/v1/models/abc")
    client.get("/elsewhere")
    _post(client, b"not audio at all")
    assert backend.observed == [
        ("/healthz", 200),
        ("/v1/models/{model_id:path}", 404),
        ("other", 404),
        ("/v1/audio/transcriptions", 415),
    ]
    # Errors are counted by their code (rejections by reason), without reading bodies.
    assert backend.error_codes == [None, "model_not_found", "not_found", "unsupported_audio"]


# --------------------------------------------------------------------------- upload limit (ASGI)


def _scope(headers: dict[str, str], peer: str = "127.0.0.1") -> dict[str, Any]:
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
        "client": (peer, 1),
        "server": ("127.0.0.1", 80),
    }


async def _call(
    app,
    scope,
    bodies: list[bytes],
    *,
    stall: asyncio.Event | None = None,
    headers_out: dict[str, str] | None = None,
) -> tuple[int, dict, int]:
    """Run one ASGI request; return status, JSON body and how many receives happened
    (the response's headers into ``headers_out``). With ``stall``, the body stops
    after its first piece until the event is set."""
    reads = 0
    sent: list[dict] = []

    async def receive():
        nonlocal reads
        reads += 1
        if stall is not None and reads == 2:
            await stall.wait()
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
    start = next(m for m in sent if m["type"] == "http.response.start")
    status = start["status"]
    if headers_out is not None:
        headers_out.update((k.decode(), v.decode()) for k, v in start.get("headers", []))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), reads


def test_declared_oversize_body_is_refused_before_reading():
    backend = FakeBackend(max_upload_bytes=LIMIT)
    app = create_http_app(lambda: backend)
    headers = {
        "content-type": "multipart/form-data; boundary=x",
        "content-length": str(LIMIT + 1),
    }
    status, body, reads = asyncio.run(_call(app, _scope(headers), [b"x" * (LIMIT + 1)]))
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert reads == 0
    assert backend.pipeline.in_flight == 0


def test_chunked_oversize_body_stops_being_read_at_the_limit():
    backend = FakeBackend(max_upload_bytes=LIMIT)
    app = create_http_app(lambda: backend)
    head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    pieces = [head] + [b"\x00" * 1000] * 50  # 50 kB against a 10 kB limit
    headers = {"content-type": "multipart/form-data; boundary=x"}
    status, body, reads = asyncio.run(_call(app, _scope(headers), pieces))
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert reads <= LIMIT // 1000 + 2
    assert backend.pipeline.in_flight == 0


def _pieces(audio: bytes) -> tuple[list[bytes], dict[str, str]]:
    body, content_type = multipart_file(audio)
    return [body[:50], body[50:]], {"content-type": content_type}


def test_a_body_that_stops_arriving_is_cut_with_408():
    backend = FakeBackend(body_grace_s=0.2)
    app = create_http_app(lambda: backend)
    pieces, headers = _pieces(chunks_audio(1))

    async def run():
        return await asyncio.wait_for(
            _call(app, _scope(headers), pieces, stall=asyncio.Event()), timeout=10
        )

    status, body, _ = asyncio.run(run())
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert backend.pipeline.in_flight == 0


def test_a_client_that_hangs_up_before_any_answer_is_observed_as_499():
    backend = FakeBackend()
    app = create_http_app(lambda: backend)
    pieces, headers = _pieces(chunks_audio(1))

    async def run() -> None:
        stall = asyncio.Event()
        request = asyncio.ensure_future(_call(app, _scope(headers), pieces, stall=stall))
        await asyncio.sleep(0.05)
        request.cancel()  # what Serve does when the client's connection closes
        with contextlib.suppress(asyncio.CancelledError):
            await request

    asyncio.run(run())
    assert backend.observed == [("/v1/audio/transcriptions", 499)]
    assert backend.pipeline.in_flight == 0


def test_trickling_uploads_do_not_lock_out_a_normal_request():
    """The slowloris case: bodies still arriving hold intake places, not the
    pipeline's slots, so with every transcription slot's worth of stalled uploads a
    normal request is still transcribed; one more upload than intake places is a 503."""
    backend = FakeBackend(max_concurrent_requests=2, max_concurrent_uploads=4)
    app = create_http_app(lambda: backend)
    pieces, headers = _pieces(chunks_audio(1))

    async def run():
        stall = asyncio.Event()
        stalled = [
            asyncio.ensure_future(_call(app, _scope(headers), pieces, stall=stall))
            for _ in range(3)
        ]
        await asyncio.sleep(0.05)  # the three are now waiting for their bodies
        normal = await _call(app, _scope(headers), pieces)
        extra_stall = asyncio.ensure_future(_call(app, _scope(headers), pieces, stall=stall))
        await asyncio.sleep(0.05)
        refused = await _call(app, _scope(headers), pieces)
        stall.set()
        finished = await asyncio.gather(*stalled, extra_stall)
        return normal, refused, finished

    normal, refused, finished = asyncio.run(run())
    assert normal[0] == 200, normal
    assert refused[0] == 503 and refused[1]["error"]["code"] == "overloaded"
    # All four bodies complete at once: two take the slots, two wait; none hangs.
    assert [f[0] for f in finished] == [200] * 4
    assert backend.pipeline.in_flight == 0


@pytest.mark.parametrize("id_header", [None, "X-Real-IP"])
def test_one_client_over_its_limit_gets_429_and_others_are_served(id_header):
    """Two uploads held open by one client take its two places: its third is a 429 with
    Retry-After at once, before its body; another client is served meanwhile, and the
    first client's places come back when its requests end."""
    backend = FakeBackend(max_requests_per_client=2, client_id_header=id_header, retry_after_s=3)
    app = create_http_app(lambda: backend)
    pieces, headers = _pieces(chunks_audio(1))
    refused_headers: dict[str, str] = {}

    def scope(client: str) -> dict[str, Any]:
        if id_header:  # the same peer (the proxy), told apart by the header
            return _scope({**headers, id_header: client})
        return _scope(headers, peer=client)

    async def run():
        stall = asyncio.Event()
        held = [
            asyncio.ensure_future(_call(app, scope("10.0.0.1"), pieces, stall=stall))
            for _ in range(2)
        ]
        await asyncio.sleep(0.05)
        refused = await _call(app, scope("10.0.0.1"), pieces, headers_out=refused_headers)
        other = await _call(app, scope("10.0.0.2"), pieces)
        stall.set()
        finished = await asyncio.gather(*held)
        again = await _call(app, scope("10.0.0.1"), pieces)
        return refused, other, finished, again

    refused, other, finished, again = asyncio.run(run())
    status, body, reads = refused
    assert status == 429 and reads == 0 and refused_headers["retry-after"] == "3"
    assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "requests"
    assert other[0] == 200
    assert [f[0] for f in finished] == [200, 200]
    assert again[0] == 200
    assert backend.pipeline.in_flight == 0


# --------------------------------------------------------------------------- auth and CORS


def test_api_key_guards_every_route_but_health():
    client = _client(FakeBackend(api_key="k"))
    for path in ("/v1/models", "/openapi.json", "/nowhere"):
        response = client.get(path)
        assert_openai_error(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
    assert_openai_error(client.get("/v1/models", headers={"Authorization": "Basic k"}), 401)
    assert_openai_error(client.get("/v1/models", headers={"Authorization": "Bearer kk"}), 401)
    assert_openai_error(client.get("/v1/models", headers={"Authorization": "Bearer"}), 401)
    assert client.get("/v1/models", headers={"Authorization": "Bearer k"}).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_the_browser_page_is_open_with_a_strict_policy_and_nothing_else_is():
    """The page and its assets need no key (they hold no secret) and carry a CSP that
    runs only their own scripts; paths that merely look like them stay guarded."""
    client = _client(FakeBackend(api_key="k"))
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="ui/app.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert client.head("/").status_code == 200
    for asset, kind in [("app.js", "javascript"), ("api.js", "javascript"), ("style.css", "css")]:
        response = client.get(f"/ui/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"], asset
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-security-policy"] == policy
    assert client.get("/ui/missing.js").status_code == 404
    assert client.get("/ui/../http_api.py").status_code in (401, 404)
    assert client.get("/ui/%2e%2e/__init__.py").status_code == 404
    for guarded in ("/uix", "/index.html", "/v1/models", "/ui"):
        assert_openai_error(client.get(guarded), 401)


def test_the_page_under_a_route_prefix_redirects_to_the_slash_its_links_need():
    client = TestClient(create_http_app(lambda: FakeBackend()), root_path="/guarded")
    response = client.get("/guarded", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"].endswith("/guarded/")
    assert client.get("/guarded/").status_code == 200


@pytest.mark.parametrize(
    "name, value",
    [
        ("x-request-timeout-seconds", "0"),
        ("X-Request-Timeout-Seconds", "86400"),
        ("x_request_timeout_seconds", "-1"),
        ("x-request-disconnect-disabled", "?1"),
        ("x-session-id", "pin-me"),
        ("serve_multiplexed_model_id", "other"),
        ("serve-multiplexed-model-id", "other"),
        ("x-serve-router-backend", "replica-1"),
    ],
)
def test_ray_control_headers_are_refused_before_any_work(name, value):
    """Pass: 400 ``reserved_header`` naming the header, on every route, before auth, and
    the request never reaches the pipeline (nothing admitted, nothing decoded)."""
    backend = FakeBackend(api_key="k")
    client = _client(backend)
    headers = {name: value, "Authorization": "Bearer k"}
    response = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", chunks_audio(2), "audio/wav")},
        data={"model": "whisper-1"},
        headers=headers,
    )
    error = assert_openai_error(response, 400, param=name.lower().replace("_", "-"))
    assert error["code"] == "reserved_header"
    assert backend.decoded_chunks == 0 and backend.pipeline.in_flight == 0
    assert_openai_error(client.get("/v1/models", headers={name: value}), 400)


def test_ray_control_headers_cover_what_the_pinned_ray_acts_on():
    """Pass: every header constant Ray's proxy/replica parse is in the refused set, so a
    Ray upgrade that adds one fails here rather than silently handing it to clients."""
    from ray.serve._private import constants

    from serve_app.serve.http_edge import RAY_CONTROL_HEADER_PREFIX, RAY_CONTROL_HEADERS

    acted_on = {
        constants.SERVE_HTTP_REQUEST_TIMEOUT_S_HEADER,
        constants.SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER,
        constants.SERVE_SESSION_ID,
        constants.SERVE_MULTIPLEXED_MODEL_ID,
    }
    assert {h.lower().replace("_", "-") for h in acted_on} <= RAY_CONTROL_HEADERS
    assert constants.SERVE_INGRESS_ROUTER_HEADER_PREFIX == RAY_CONTROL_HEADER_PREFIX
    header_constants = {
        name for name in dir(constants) if name.endswith("_HEADER") and name.startswith("SERVE_")
    }
    # The request id is the one Ray header we honour: _request_id validates it.
    assert header_constants == {
        "SERVE_HTTP_REQUEST_TIMEOUT_S_HEADER",
        "SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER",
        "SERVE_HTTP_REQUEST_ID_HEADER",
    }, header_constants


def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("TEST_REVERB_KEY", "from-env")
    client = _client(FakeBackend(api_key_env="TEST_REVERB_KEY"))
    headers = {"Authorization": "Bearer from-env"}
    assert client.get("/v1/models", headers=headers).status_code == 200
    monkeypatch.delenv("TEST_REVERB_KEY")
    with pytest.raises(RuntimeError, match="TEST_REVERB_KEY"):
        FakeBackend(api_key_env="TEST_REVERB_KEY")


def test_cors_only_for_the_allowlist():
    response = _client(FakeBackend()).get("/healthz", headers={"Origin": "http://a.example"})
    assert "access-control-allow-origin" not in response.headers
    client = _client(FakeBackend(cors_origins=["http://a.example"], api_key="k"))
    preflight = client.options(
        "/v1/audio/transcriptions",
        headers={"Origin": "http://a.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://a.example"
    refused = client.get("/v1/models", headers={"Origin": "http://a.example"})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "http://a.example"


def test_cors_headers_on_every_error_and_none_for_other_origins():
    origin = {"Origin": "http://a.example"}
    backend = FakeBackend(cors_origins=["http://a.example"], max_upload_bytes=LIMIT)
    client = _client(backend)
    too_large = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", b"x" * (2 * LIMIT), "audio/wav")},
        headers=origin,
    )
    not_audio = client.post(
        "/v1/audio/transcriptions", files={"file": ("a.wav", b"text", "audio/wav")}, headers=origin
    )
    held = [backend.pipeline.admit() for _ in range(backend.pipeline.max_held)]
    full = client.post(
        "/v1/audio/transcriptions", files={"file": ("a.wav", b"small", "audio/wav")}, headers=origin
    )
    for admission in held:
        admission.release()
    for response, status in ((too_large, 413), (not_audio, 415), (full, 503)):
        assert_openai_error(response, status)
        assert response.headers["access-control-allow-origin"] == "http://a.example"
        assert "access-control-allow-credentials" not in response.headers
    assert "retry-after" in full.headers["access-control-expose-headers"].lower()
    other = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    preflight = client.options("/v1/audio/transcriptions", headers=other)
    assert "access-control-allow-origin" not in preflight.headers
    plain = client.get("/v1/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in plain.headers


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"--x\r\nrandom"),
        ("multipart/form-data; boundary=x", b"garbage without any boundary"),
        ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="fi'),
        ("multipart/form-data; boundary=x", b"--x--\r\n"),
        ("application/octet-stream", b"RIFF...."),
        ("application/json", b'{"file": "x"}'),
    ],
)
def test_malformed_requests_are_4xx_never_500(content_type, body):
    backend = FakeBackend()
    response = _client(backend).post(
        "/v1/audio/transcriptions", content=body, headers={"Content-Type": content_type}
    )
    assert 400 <= response.status_code < 500, response.text
    assert_openai_error(response, response.status_code)
    assert backend.pipeline.in_flight == 0


# --------------------------------------------------------------------------- the schema


def test_openapi_is_generated_and_documents_every_form_field():
    from serve_app.serve.http_models import TranscriptionForm

    schema = _client(FakeBackend()).get("/openapi.json").json()
    assert schema["info"]["version"] == __import__("serve_app").__version__
    operation = schema["paths"]["/v1/audio/transcriptions"]["post"]
    ref = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    form = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    names = {
        field.serialization_alias or name for name, field in TranscriptionForm.model_fields.items()
    }
    assert names == set(form["properties"])
    for name in names:
        assert form["properties"][name].get("description"), name
    granularities = form["properties"]["timestamp_granularities[]"]
    assert granularities["items"]["enum"] == ["word", "segment"]
    assert set(operation["responses"]) >= {"200", "400", "413", "415", "503"}


def test_an_ffconcat_text_naming_a_server_file_is_415(tmp_path, monkeypatch):
    """The reported exploit, over HTTP: a 46-byte text that names an audio file the
    server can read is refused instead of transcribing that file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.wav").write_bytes(chunks_audio(1))
    upload = b"ffconcat version 1.0\nfile secret.wav\n"
    response = _post(_client(FakeBackend()), upload)
    assert_openai_error(response, 415, param="file")
