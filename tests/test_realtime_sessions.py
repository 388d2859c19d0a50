"""A realtime replica's sessions without Ray: a real uvicorn server on 127.0.0.1 and
real WebSocket clients, with the tiny model and finals from a local Transcriber.

What the proxy would hide: a client that sends but never reads is closed and its
socket let go while it still reads nothing, and one session's fault in the step loop
leaves another session's partials and finals untouched.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi import FastAPI, WebSocket

from serve_app.engine.options import DecodeOptions
from serve_app.engine.transcriber import Transcriber
from serve_app.serve.realtime_config import RealtimeConfig
from serve_app.serve.realtime_observer import RealtimeObserver
from serve_app.serve.realtime_sessions import RealtimeSessions
from tests.local_server import serving
from tests.never_reads import NeverReads

COMMIT_ONLY = {
    "type": "session.update",
    "session": {
        "type": "transcription",
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}
        },
    },
}


@dataclass
class Replica:
    sessions: RealtimeSessions
    transcriber: Transcriber
    url: str
    handlers: list[int]  # serve_session calls still running


@pytest.fixture(scope="module")
def replica(tiny_model_dir, tiny_model) -> Iterator[Replica]:
    transcriber = Transcriber(tiny_model)

    async def finals(audio: np.ndarray, options: DecodeOptions) -> str:
        return (await asyncio.to_thread(transcriber.transcribe, audio, options)).text

    config = RealtimeConfig(model=str(tiny_model_dir), device="cpu", max_sessions=4)
    sessions = RealtimeSessions(config, tiny_model, finals)
    handlers = [0]
    app = FastAPI()

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        handlers[0] += 1
        try:
            await sessions.serve_session(websocket)
        finally:
            handlers[0] -= 1

    # uvicorn's websockets implementation waits for the socket to drain on each send,
    # as a real server does, so a client that never reads blocks the session's sender
    # (its sans-I/O one buffers without bound, which would hide the slow reader).
    with serving(app, ws="websockets") as port:
        yield Replica(sessions, transcriber, f"ws://127.0.0.1:{port}/v1/realtime", handlers)


def _connect(replica: Replica, **kwargs):
    from websockets.sync.client import connect

    return connect(replica.url + "?intent=transcription", open_timeout=30, **kwargs)


def _wait(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.slow
def test_a_client_that_never_reads_is_closed_and_its_socket_let_go(replica):
    unknown = json.dumps({"type": "never.heard.of"})  # each one answers an error event
    client = NeverReads(replica.url + "?intent=transcription", write_timeout_s=5)
    try:
        # Its error events fill both sockets' buffers, then the session's outbox, until
        # the client's writes fail or stall. The session is closed and its handler
        # returns although the client never reads (flushing to it, or even a close
        # frame, would wait for ever). Closing the socket is then uvicorn's part
        # (through Serve's proxy: tests/serve/test_realtime.py).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                client.send(unknown)
        assert _wait(lambda: replica.handlers[0] == 0 and not replica.sessions.sessions, 30)
    finally:
        client.close()


def _pcm16_b64(samples: np.ndarray) -> str:
    return base64.b64encode((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def _talk(ws, audio: np.ndarray) -> list[dict]:
    """Set the session up, send the audio in 100 ms appends, wait for the partials (a
    delta, or the step's failure), commit, and read until the item's final arrives."""
    ws.send(json.dumps(COMMIT_ONLY))
    for at in range(0, audio.size, 1600):
        piece = _pcm16_b64(audio[at : at + 1600])
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": piece}))
    events: list[dict] = []

    def until(*kinds: str) -> None:
        while True:
            events.append(json.loads(ws.recv(timeout=120)))
            kind = events[-1].get("error", {}).get("code") or events[-1]["type"]
            if kind.endswith(kinds):
                return

    until("transcription.delta", "step_failed")
    ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
    until("transcription.completed", "transcription.failed")
    return events


def test_one_sessions_fault_in_the_step_loop_leaves_the_other_session_whole(
    replica, recorder, synth
):
    audio = [synth(5.0, seed=31), synth(5.0, seed=32)]
    exact = [(np.clip(a, -1, 1) * 32767).astype("<i2").astype(np.float32) / 32768 for a in audio]
    with _connect(replica) as faulty, _connect(replica) as healthy:
        assert _wait(lambda: len(replica.sessions.sessions) == 2, 30)
        broken = next(iter(replica.sessions.sessions))

        def on_step(out) -> None:
            raise RuntimeError("a fault in this session's handling of its step")

        broken.on_step = on_step
        # Which socket got the broken session is not known: both talk, then tell.
        results: dict[str, list[dict]] = {}
        threads = [
            threading.Thread(target=lambda n=n, w=w, a=a: results.__setitem__(n, _talk(w, a)))
            for n, w, a in (("a", faulty, audio[0]), ("b", healthy, audio[1]))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
    failed_steps = {
        name: [e for e in events if e.get("error", {}).get("code") == "step_failed"]
        for name, events in results.items()
    }
    faults = [c for c in recorder.calls if c[0] == "step_failed"]
    assert faults and all(rows == 1 for _, rows in faults)  # the broken session's alone
    assert len(results) == 2
    assert sorted(len(v) > 0 for v in failed_steps.values()) == [False, True]
    for (name, events), want in zip(sorted(results.items()), exact, strict=True):
        completed = events[-1]
        assert completed["type"].endswith("transcription.completed"), completed
        assert completed["transcript"] == replica.transcriber.transcribe(want).text
        deltas = "".join(e["delta"] for e in events if e["type"].endswith("delta"))
        if not failed_steps[name]:
            assert deltas.strip(), "the healthy session got no partials"


class Recorder(RealtimeObserver):
    """Every observer call, in order, as (name, args)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattribute__(self, name: str):
        if name in RealtimeObserver.__dict__ and not name.startswith("_"):
            return lambda *args: object.__getattribute__(self, "calls").append((name, *args))
        return object.__getattribute__(self, name)


@pytest.fixture
def recorder(replica) -> Iterator[Recorder]:
    recorder = Recorder()
    replica.sessions.observer = recorder
    yield recorder
    replica.sessions.observer = RealtimeObserver()


def test_the_observer_hears_sessions_refusals_steps_and_turns(replica, recorder, synth):
    """What the metrics are made of: opened and ended sessions with the count left open,
    a refused intent and a refusal past the limit, every batched step's rows and time,
    and each turn's final with its audio."""
    from websockets.sync.client import connect

    audio = synth(2.0, seed=33)
    with _connect(replica) as ws:
        events = _talk(ws, audio)
        assert events[-1]["type"].endswith("transcription.completed")
        with connect(replica.url + "?intent=conversation", open_timeout=30) as refused:
            assert json.loads(refused.recv(timeout=30))["error"]["code"] == "invalid_intent"
        held = [_connect(replica) for _ in range(3)]  # with ws: the limit of 4
        try:
            with _connect(replica) as extra:
                error = json.loads(extra.recv(timeout=30))["error"]
                assert error["code"] == "session_limit_reached"
        finally:
            for h in held:
                h.close()
    assert _wait(lambda: not replica.sessions.sessions, 30)
    calls = recorder.calls
    counts = [c[1] for c in calls if c[0] == "sessions_open"]
    assert max(counts) == 4 and counts[-1] == 0  # the limit's four, then none
    ends = [c[1] for c in calls if c[0] == "session_ended"]
    assert ends == ["closed"] * 4
    refusals = [c[1] for c in calls if c[0] == "session_refused"]
    assert refusals == ["invalid_intent", "session_limit_reached"]
    steps = [c for c in calls if c[0] == "step_done"]
    assert steps and all(rows == 1 and 0 < seconds < 30 for _, rows, seconds in steps)
    (turn,) = [c for c in calls if c[0] == "turn_ended"]
    assert turn[1] is True and 0 < turn[2] < 60
    assert turn[3] == pytest.approx(audio.size / 16000, abs=0.01)
    assert not [c for c in calls if c[0] == "step_failed"]
