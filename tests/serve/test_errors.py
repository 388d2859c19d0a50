"""Every way a caller can get it wrong gets the right 4xx with OpenAI's error body.

Admission errors (401, 413, 503) run against the ``guarded`` app, which has an API
key, a one-request concurrency limit and a 200 kB upload limit.
"""

from __future__ import annotations

import time

import pytest
from serve_helpers import (
    ALLOWED_ORIGIN,
    API_KEY,
    CLIENT_ID_HEADER,
    GUARDED_UPLOAD_LIMIT,
    assert_openai_error,
    multipart_file,
    stalled_upload,
)

pytestmark = pytest.mark.serve

TRANSCRIPTIONS = "/v1/audio/transcriptions"


@pytest.fixture(scope="module")
def clip(make_wav) -> bytes:
    return make_wav(2.0, 5)


def _post(client, audio: bytes | None, headers: dict[str, str] | None = None, **fields):
    files = {"file": ("clip.wav", audio, "audio/wav")} if audio is not None else None
    return client.post(TRANSCRIPTIONS, files=files, data=fields, headers=headers)


# --------------------------------------------------------------------------- 4xx for bad input


def test_undecodable_audio_is_415(http):
    error = assert_openai_error(_post(http, b"RIFF" + b"\x00garbage" * 500), 415, param="file")
    assert error["code"] == "unsupported_audio"
    assert error["type"] == "invalid_request_error"


def test_empty_file_is_400(http):
    assert_openai_error(_post(http, b""), 400, param="file")


def test_unknown_model_is_404_model_not_found(http, clip):
    error = assert_openai_error(_post(http, clip, model="gpt-9"), 404, param="model")
    assert error["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("verbatimicity", "2"),
        ("decoding_mode", "greedy"),
        ("beam_size", "ten"),
        ("ctc_weight", "-1"),
        ("word_timestamps", "exact"),
        ("response_format", "docx"),
        ("timestamp_granularities[]", "phoneme"),
        ("language", "fr"),
        ("temperature", "hot"),
        ("stream", "maybe"),
        ("verbatimcity", "0.5"),  # a typo is refused, not silently ignored
    ],
)
def test_bad_option_is_400_naming_the_field(http, clip, field, value):
    expected_param = field.removesuffix("[]")
    error = assert_openai_error(_post(http, clip, **{field: value}), 400, param=expected_param)
    assert error["type"] == "invalid_request_error"


def test_missing_file_is_400(http):
    response = http.post(TRANSCRIPTIONS, files={"model": (None, "whisper-1")})
    error = assert_openai_error(response, 400, param="file")
    assert error["code"] == "missing_required_parameter"


def test_file_as_text_field_is_400(http):
    response = http.post(TRANSCRIPTIONS, files={"file": (None, "not a file")})
    assert_openai_error(response, 400, param="file")


def test_json_body_is_400(http):
    assert_openai_error(http.post(TRANSCRIPTIONS, json={"file": "x"}), 400, param="file")


def test_audio_over_the_duration_limit_is_413(http, make_wav):
    """The main app allows 120 s of audio; the check runs while decoding."""
    error = assert_openai_error(_post(http, make_wav(121.0, 1)), 413, param="file")
    assert error["code"] == "audio_too_long"


def test_unknown_route_and_method_are_openai_shaped(http):
    assert_openai_error(http.get("/v1/nothing-here"), 404)
    assert_openai_error(http.get(TRANSCRIPTIONS), 405)
    assert_openai_error(http.get("/v1/models/nope"), 404, param="model")


# --------------------------------------------------------------------------- Ray's headers


@pytest.mark.parametrize(
    "headers",
    [
        {"x-request-timeout-seconds": "0"},  # would switch the proxy's timeout off
        {"x-request-timeout-seconds": "100000"},  # would extend it
        {"x-request-disconnect-disabled": "?1"},  # would keep work going after a hang-up
        {"x-request-timeout-seconds": "0.001", "x-request-disconnect-disabled": "?1"},
    ],
)
def test_a_client_cannot_set_the_servers_timeout_or_disconnect_handling(
    http, clip, main_stats, headers
):
    """Pass: through Ray's real proxy, a request carrying one of its control headers does
    no work at all (no chunk reaches the model), so it cannot run past the server's
    deadline or outlive its client. It is a 400 ``reserved_header``; a tiny timeout may
    instead end it sooner with the proxy's 408, which only ends the sender's request."""
    before = main_stats()["rows"]
    response = http.post(
        TRANSCRIPTIONS, files={"file": ("clip.wav", clip, "audio/wav")}, headers=headers
    )
    if response.status_code == 408:
        assert headers.get("x-request-timeout-seconds") == "0.001", response.text
    else:
        assert assert_openai_error(response, 400)["code"] == "reserved_header"
    assert main_stats()["rows"] == before
    assert _post(http, clip).status_code == 200  # and the server serves the next one


# --------------------------------------------------------------------------- API key


def test_api_key_required_on_v1_routes(serve_cluster, clip):
    import httpx

    base = serve_cluster.guarded_url
    no_key = httpx.get(base + "/v1/models")
    error = assert_openai_error(no_key, 401)
    assert error["code"] == "invalid_api_key"
    assert no_key.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(base + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert_openai_error(wrong, 401)
    upload = httpx.post(base + TRANSCRIPTIONS, files={"file": ("a.wav", clip, "audio/wav")})
    assert_openai_error(upload, 401)
    right = httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert right.status_code == 200


def test_only_the_health_endpoints_stay_open(serve_cluster, guarded):
    import httpx

    base = serve_cluster.guarded_url
    assert httpx.get(base + "/healthz").status_code == 200
    assert httpx.get(base + "/readyz").status_code == 200
    assert_openai_error(httpx.get(base + "/openapi.json"), 401)
    assert guarded.get("/openapi.json").json()["openapi"].startswith("3.1")


def test_openai_sdk_with_the_right_key(serve_cluster, clip):
    from openai import AuthenticationError, OpenAI

    good = OpenAI(base_url=serve_cluster.guarded_url + "/v1", api_key=API_KEY, max_retries=0)
    assert good.audio.transcriptions.create(model="whisper-1", file=("a.wav", clip)).text
    bad = OpenAI(base_url=serve_cluster.guarded_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(AuthenticationError):
        bad.audio.transcriptions.create(model="whisper-1", file=("a.wav", clip))


# --------------------------------------------------------------------------- upload limit


def _multipart(size: int) -> tuple[bytes, str]:
    return multipart_file(b"\x00" * size, filename="big.wav")


def test_upload_over_the_limit_by_content_length_is_413(guarded):
    body, content_type = _multipart(GUARDED_UPLOAD_LIMIT + 50_000)
    response = guarded.post(TRANSCRIPTIONS, content=body, headers={"Content-Type": content_type})
    error = assert_openai_error(response, 413, param="file")
    assert error["code"] == "payload_too_large"


def test_chunked_upload_over_the_limit_is_413(guarded):
    """No Content-Length: the bytes are counted as they stream in."""
    body, content_type = _multipart(GUARDED_UPLOAD_LIMIT + 50_000)

    def pieces():
        for start in range(0, len(body), 16_384):
            yield body[start : start + 16_384]

    response = guarded.post(
        TRANSCRIPTIONS, content=pieces(), headers={"Content-Type": content_type}
    )
    assert "content-length" not in response.request.headers
    error = assert_openai_error(response, 413, param="file")
    assert error["code"] == "payload_too_large"


# --------------------------------------------------------------------------- concurrency limit


def test_over_the_upload_limit_is_503_and_over_the_clients_limit_429(guarded, serve_cluster, clip):
    """Hold the guarded app's single intake place with an upload that stalls mid-body,
    then show the next request from another client is refused at once with 503 and
    one from the same client (the same peer address, through Ray's proxy) with 429,
    both with Retry-After; once the stalled body completes, both places are free."""
    stalled_headers = {"Authorization": f"Bearer {API_KEY}"}  # told apart by peer address
    with stalled_upload(serve_cluster.guarded_url, stalled_headers) as outcome:
        deadline = time.monotonic() + 20
        another_client = {CLIENT_ID_HEADER: "another"}
        while (refused := _post(guarded, clip, another_client)).status_code == 200:
            # Until the stalled upload reaches the app, requests still get through.
            assert time.monotonic() < deadline, "the stalled upload never reached the app"
            time.sleep(0.05)
        error = assert_openai_error(refused, 503)
        assert error["code"] == "overloaded"
        assert refused.headers["retry-after"] == "2"
        same_client = _post(guarded, clip)
        error = assert_openai_error(same_client, 429)
        assert error["code"] == "rate_limit_exceeded"
        assert same_client.headers["retry-after"] == "2"
    # The held request completes normally (its body is not audio) and frees the place.
    assert getattr(outcome["response"], "status_code", None) == 415, outcome
    assert _post(guarded, clip).status_code == 200


# --------------------------------------------------------------------------- CORS


def test_cors_allowlist(serve_cluster):
    import httpx

    url = serve_cluster.guarded_url + TRANSCRIPTIONS
    preflight_headers = {
        "Origin": ALLOWED_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    allowed = httpx.options(url, headers=preflight_headers)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    other = httpx.options(url, headers={**preflight_headers, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    # A 401 still carries CORS headers, so a browser app can read the error.
    unauthorized = httpx.get(
        serve_cluster.guarded_url + "/v1/models", headers={"Origin": ALLOWED_ORIGIN}
    )
    assert unauthorized.status_code == 401
    assert unauthorized.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
