"""The realtime endpoint through Ray Serve's proxy: the official openai SDK's realtime
client, raw WebSockets for what the SDK does not send, and the session limit.

The tiny random model makes nonsense words, but deterministic ones: a final must
equal what ``/v1/audio/transcriptions`` returns for the same audio.
"""

from __future__ import annotations

import base64
import json
import time

import httpx
import numpy as np
import pytest
from serve_helpers import (
    API_KEY,
    DEMO_DATA,
    DEMO_PREFIX,
    DEMO_REALTIME_PREFIX,
    REALTIME_PREFIX,
    manifest_text,
    wav_bytes,
)

TRANSCRIPTIONS = "/v1/audio/transcriptions"


def pcm16_b64(samples: np.ndarray) -> str:
    return base64.b64encode((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def ws_url(serve_cluster, prefix: str = REALTIME_PREFIX) -> str:
    return serve_cluster.base_url.replace("http://", "ws://") + prefix


def browser_connect(url: str):
    """As a browser connects: no headers, the key as OpenAI's subprotocol."""
    from websockets.sync.client import connect

    protocols = ["realtime", f"openai-insecure-api-key.{API_KEY}"]
    return connect(url + "?intent=transcription", subprotocols=protocols, open_timeout=30)


COMMIT_ONLY_16K = {
    "type": "transcription",
    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}},
}


def test_the_openai_sdk_realtime_client_gets_deltas_and_a_final_equal_to_the_file_api(
    serve_cluster, speech
):
    from openai import OpenAI

    audio = speech(6.0, 21)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    exact = pcm.astype(np.float32) / 32768  # what both paths decode
    client = OpenAI(base_url=serve_cluster.base_url + "/v1", api_key=API_KEY, max_retries=0)
    events = []
    with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        conn.session.update(session=COMMIT_ONLY_16K)
        for piece in np.array_split(pcm, 60):  # 100 ms appends
            conn.input_audio_buffer.append(audio=base64.b64encode(piece.tobytes()).decode())
        conn.input_audio_buffer.commit()
        for event in conn:
            events.append(event)
            if event.type.endswith("transcription.completed") or event.type == "error":
                break
    kinds = [e.type for e in events]
    assert kinds[:2] == ["session.created", "session.updated"], kinds
    assert "error" not in kinds, events[-1]
    (committed,) = [e for e in events if e.type == "input_audio_buffer.committed"]
    completed = events[-1]
    assert completed.item_id == committed.item_id
    file_api = httpx.post(
        serve_cluster.base_url + TRANSCRIPTIONS,
        files={"file": ("a.wav", wav_bytes(exact))},
        timeout=120,
    ).json()["text"]
    assert completed.transcript == file_api
    assert completed.usage.seconds == pytest.approx(6.0, abs=0.01)
    deltas = "".join(e.delta for e in events if e.type.endswith("transcription.delta"))
    assert all(e.item_id == committed.item_id for e in events if e.type.endswith(".delta"))
    # Deltas are append-only settled words of the partial: a run of whole words.
    assert deltas == deltas.strip() and "  " not in deltas


def test_the_live_endpoint_has_its_own_readiness_probe_without_the_key(serve_cluster):
    """Load balancers probe the live endpoint apart from the file API's /readyz: the
    Realtime replica answers once it has started (its model loaded), key or not."""
    ready = httpx.get(serve_cluster.base_url + REALTIME_PREFIX + "/readyz", timeout=30)
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["device"] == "cpu"
    assert "/" not in body["model"]  # the served id, not the replica's model path
    assert 0 <= body["sessions"] <= body["max_sessions"] == 3


def test_without_the_key_the_socket_is_refused_and_the_subprotocol_key_works(serve_cluster):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(serve_cluster) + "?intent=transcription", open_timeout=30)
    assert refused.value.response.status_code == 403
    with browser_connect(ws_url(serve_cluster)) as ws:
        assert ws.subprotocol == "realtime"  # never the key echoed back
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"


def test_through_the_proxy_a_client_that_never_reads_is_closed(serve_cluster):
    """Serve's proxy passes the back-pressure on: the replica's outbox fills, the
    session is closed, the socket with it, and the server takes new sessions."""
    from tests.never_reads import NeverReads

    client = NeverReads(
        ws_url(serve_cluster) + "?intent=transcription",
        subprotocols=["realtime", f"openai-insecure-api-key.{API_KEY}"],
    )
    unknown = json.dumps({"type": "never.heard.of"})  # each one answers an error event
    try:
        with pytest.raises((BrokenPipeError, ConnectionResetError)):  # not a timeout
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                client.send(unknown)
    finally:
        client.close()
    with browser_connect(ws_url(serve_cluster)) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"


def test_bad_events_get_error_events_and_the_session_goes_on(serve_cluster):
    with browser_connect(ws_url(serve_cluster)) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        ws.send("not json")
        ws.send(json.dumps({"type": "response.create"}))
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "c1"}))
        errors = [json.loads(ws.recv(timeout=30)) for _ in range(4)]
        assert [e["type"] for e in errors] == ["error"] * 4
        assert [e["error"]["code"] for e in errors] == [
            "invalid_json",
            "invalid_event",
            "invalid_value",
            "input_audio_buffer_commit_empty",
        ]
        assert errors[-1]["error"]["event_id"] == "c1"
        # The earlier session shape still works on the same socket.
        ws.send(
            json.dumps(
                {"type": "transcription_session.update", "session": {"turn_detection": None}}
            )
        )
        assert json.loads(ws.recv(timeout=30))["type"] == "transcription_session.updated"


def test_past_the_session_limit_a_new_session_is_refused_with_an_error(serve_cluster):
    from websockets.exceptions import ConnectionClosed

    url = ws_url(serve_cluster)
    held = [browser_connect(url) for _ in range(3)]
    try:
        for ws in held:
            assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        with browser_connect(url) as extra:
            refusal = json.loads(extra.recv(timeout=30))
            assert refusal["type"] == "error"
            assert refusal["error"]["code"] == "session_limit_reached"
            with pytest.raises(ConnectionClosed) as closed:
                extra.recv(timeout=30)
            assert closed.value.rcvd.code == 1013
    finally:
        for ws in held:
            ws.close()
    # Closed sessions free their places.
    with browser_connect(url) as again:
        assert json.loads(again.recv(timeout=30))["type"] == "session.created"


def test_server_vad_on_real_speech_ends_each_turn_and_its_final_is_the_file_apis(
    serve_cluster,
):
    """The demo model's own blanks find two held-out sentences with a pause between
    them: two turns, chained, each ``completed`` equal to what the file API returns for
    exactly the audio the server says the turn spans."""
    from websockets.sync.client import connect

    from serve_app.engine.audio import decode_audio

    names = ["heldout_00.opus", "heldout_03.opus"]
    pause = np.zeros(int(1.2 * 16000), np.float32)
    audio = np.concatenate(
        [p for n in names for p in (pause, decode_audio((DEMO_DATA / n).read_bytes()))] + [pause]
    )
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    vad = {"type": "server_vad", "silence_duration_ms": 500, "prefix_padding_ms": 300}
    update = {"type": "transcription", "audio": {"input": {**COMMIT_ONLY_16K["audio"]["input"]}}}
    update["audio"]["input"]["turn_detection"] = vad
    events = []
    with connect(ws_url(serve_cluster, DEMO_REALTIME_PREFIX) + "?intent=transcription") as ws:
        ws.send(json.dumps({"type": "session.update", "session": update}))
        for piece in np.array_split(pcm, pcm.size // 1600):  # 100 ms appends, unpaced
            ws.send(
                json.dumps({"type": "input_audio_buffer.append", "audio": pcm16_b64(piece / 32768)})
            )
        while sum(e["type"].endswith("transcription.completed") for e in events) < 2:
            events.append(json.loads(ws.recv(timeout=60)))
            assert events[-1]["type"] != "error", events[-1]
    started = [e for e in events if e["type"] == "input_audio_buffer.speech_started"]
    stopped = [e for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
    committed = [e for e in events if e["type"] == "input_audio_buffer.committed"]
    completed = {e["item_id"]: e for e in events if e["type"].endswith("transcription.completed")}
    assert len(started) == len(stopped) == len(committed) == 2
    assert committed[1]["previous_item_id"] == committed[0]["item_id"]
    for start, stop, name in zip(started, stopped, names, strict=True):
        assert start["item_id"] == stop["item_id"]
        turn = pcm[start["audio_start_ms"] * 16 : stop["audio_end_ms"] * 16]
        file_api = httpx.post(
            serve_cluster.base_url + DEMO_PREFIX + TRANSCRIPTIONS,
            files={"file": ("turn.wav", wav_bytes(turn.astype(np.float32) / 32768))},
            timeout=120,
        ).json()["text"]
        assert completed[start["item_id"]]["transcript"] == file_api
        assert file_api == manifest_text(name)
