"""Constants and assertions shared by the Serve tests (imported by name: pytest puts
this folder on sys.path because it holds a conftest.py and no __init__.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serve_app.engine.audio import encode_wav

MAIN_APP = "reverb"
GUARDED_APP = "guarded"
CALLER_APP = "caller"
GUARDED_PREFIX = "/guarded"
RELIABLE_APP = "reliable"
RELIABLE_PREFIX = "/reliable"
TWO_INGRESS_APP = "two-ingress"
TWO_INGRESS_PREFIX = "/two-ingress"
REALTIME_APP = "realtime"
REALTIME_PREFIX = "/v1/realtime"
DEMO_APP = "demo"
DEMO_PREFIX = "/demo"
DEMO_REALTIME_APP = "demo-realtime"
DEMO_REALTIME_PREFIX = DEMO_PREFIX + REALTIME_PREFIX  # where the page served at /demo looks
API_KEY = "test-key-123"
GUARDED_UPLOAD_LIMIT = 200_000
ALLOWED_ORIGIN = "http://allowed.example"
CLIENT_ID_HEADER = "X-Client-Id"
# Production default wait; the batching test must pass with it, not a tuned value.
BASE_BATCHING = {"max_batch_size": 16, "batch_wait_timeout_s": 0.01}
DEPLOY_TIMEOUT_S = 180


DEMO_DATA = Path(__file__).resolve().parents[1] / "data" / "demo"


def manifest_text(name: str) -> str:
    """The text of a demo held-out clip, from its manifest."""
    manifest = json.loads((DEMO_DATA / "manifest.json").read_text())
    (text,) = [c["text"] for c in manifest["clips"] if c["file"] == name]
    return text


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    """16-bit mono WAV of float samples in [-1, 1]; ``pcm / 32768`` round-trips exactly."""
    return encode_wav(samples, rate)


def assert_openai_error(response: Any, status: int, *, param: str | None = None) -> dict:
    """The status, and OpenAI's error envelope with all four keys."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


def assert_same_words(got: list[dict], expected: list[dict]) -> None:
    """Same words at the same times; confidences equal up to float32 batch noise.

    A padded batch computes the encoder with other shapes than a lone row, so the
    last bits of a posterior may differ; tokens and frame times may not.
    """
    assert [w["word"] for w in got] == [w["word"] for w in expected]
    assert [(w["start"], w["end"]) for w in got] == [(w["start"], w["end"]) for w in expected]
    for a, b in zip(got, expected, strict=True):
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)


def verbose_transcript(base_url: str, wav: bytes, **fields: Any) -> dict:
    """``verbose_json`` with words and segments over plain HTTP; asserts it has words."""
    import httpx

    response = httpx.post(
        base_url + "/v1/audio/transcriptions",
        files={"file": ("clip.wav", wav, "audio/wav")},
        data={
            **{k: str(v) for k, v in fields.items()},
            "response_format": "verbose_json",
            "timestamp_granularities[]": ["word", "segment"],
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["words"], "the tiny model should produce words for speech-like audio"
    return body


def multipart_file(payload: bytes, filename: str = "clip.wav") -> tuple[bytes, str]:
    """A hand-made multipart body with one ``file`` part, and its content type, for
    tests that send the body in pieces."""
    boundary = "reverbboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"'
        "\r\nContent-Type: audio/wav\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + payload + tail, f"multipart/form-data; boundary={boundary}"


@contextmanager
def stalled_upload(url: str, headers: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A transcription upload to ``url`` that sends its first 100 bytes and stalls until
    the block ends, so it holds an intake place meanwhile (a 1000-byte body that is not
    audio: it ends in 415). Yields a dict that gets the ``response`` (or the exception)
    once the upload has finished, after the block."""
    import httpx

    release, first_piece_sent = threading.Event(), threading.Event()
    body, content_type = multipart_file(b"\x00" * 1000, filename="big.wav")
    outcome: dict[str, Any] = {}

    def upload() -> None:
        def pieces() -> Iterator[bytes]:
            yield body[:100]
            first_piece_sent.set()
            release.wait(30)
            yield body[100:]

        try:
            outcome["response"] = httpx.post(
                url + "/v1/audio/transcriptions",
                content=pieces(),
                headers={**headers, "Content-Type": content_type},
                timeout=60,
            )
        except Exception as exc:  # the caller's assertions report it
            outcome["response"] = exc

    holder = threading.Thread(target=upload)
    holder.start()
    try:
        # A request sent while the stalled upload is still on its way could take the
        # one intake place first and turn the stalled upload away.
        assert first_piece_sent.wait(20)
        time.sleep(0.5)
        yield outcome
    finally:
        release.set()
        holder.join(60)
