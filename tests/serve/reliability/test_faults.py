"""Faults on a real Serve deployment: clients that leave, replicas that die.

They run against the session's ``reliable`` app (two Transcriber replicas, one chunk of
a request on the model at a time) so that killing or starving its replicas leaves the
other apps alone. Load is bounded in count and time and goes to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from serve_helpers import RELIABLE_APP, TWO_INGRESS_APP, wav_bytes

from bench.attack_http import silent_opus

pytestmark = pytest.mark.serve

TRANSCRIPTIONS = "/v1/audio/transcriptions"


def _readyz(url: str) -> dict[str, Any]:
    return httpx.get(url + "/readyz", timeout=30).json()


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until ``condition()`` held (polled every 20 ms)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what} within {timeout_s} s"
        time.sleep(0.02)
    return time.monotonic() - started


def _raw_upload(url: str, audio: bytes, **fields: str) -> socket.socket:
    """Send a whole multipart upload on a raw socket and return it unread, so the test
    decides exactly when the client goes away."""
    boundary = "reliability"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in {"model": "whisper-1", **fields}.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.opus"\r\n'
        "Content-Type: audio/ogg\r\n\r\n".encode()
        + audio
        + f"\r\n--{boundary}--\r\n".encode()
    )
    body = b"".join(parts)
    target = urlsplit(url)
    sock = socket.create_connection((target.hostname, target.port), timeout=60)
    head = (
        f"POST {target.path}{TRANSCRIPTIONS} HTTP/1.1\r\nHost: {target.hostname}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


@pytest.fixture(scope="module")
def long_silence() -> bytes:
    """50 minutes of silence: 150 chunks, one at a time on the model, so the request
    is still running when its client leaves."""
    return silent_opus(3000)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "sse"])
def test_a_client_that_leaves_stops_its_chunks_within_a_second(serve_cluster, long_silence, stream):
    """Pass: once the request is on the model, closing the connection releases it in
    the Ingress (no chunk of it running or waiting) within 1 s, so no new chunk of it
    starts later than that; the next request is served."""
    url = serve_cluster.reliable_url
    fields = {"stream": "true"} if stream else {}
    sock = _raw_upload(url, long_silence, **fields)
    try:
        _wait_for(lambda: _readyz(url)["on_model"] == 1, 60, "the request reached the model")
        if stream:
            assert b"200" in sock.recv(4096).split(b"\r\n", 1)[0]  # headers of the stream
    finally:
        sock.close()
    left = _wait_for(lambda: _readyz(url)["in_flight"] == 0, 5, "the request was released")
    assert left < 1.0, f"released {left:.2f} s after the client left"
    print(f"\n{'SSE' if stream else 'plain'} client left: request released in {left:.2f} s")
    assert _readyz(url)["on_model"] == 0
    clip = silent_opus(3)
    again = httpx.post(url + TRANSCRIPTIONS, files={"file": ("a.opus", clip)}, timeout=60)
    assert again.status_code == 200


def test_many_cancellations_never_leave_the_batched_transcriber_stuck(serve_cluster):
    """Ray issue #50046: a ``@serve.batch`` deployment stuck for good after many of its
    callers were cancelled. Pass: three rounds of eight clients that leave once all
    their requests are on the model (chunks queued for a batch, in one, or between
    two); each round is released within 5 s, and afterwards eight fresh requests at
    once are all 200."""
    url = serve_cluster.reliable_url
    audio = silent_opus(200)  # 10 chunks, one at a time per request: still running
    for _ in range(3):
        socks = [_raw_upload(url, audio) for _ in range(8)]
        try:
            _wait_for(lambda: _readyz(url)["on_model"] == 8, 60, "all eight on the model")
        finally:
            for sock in socks:
                sock.close()
        _wait_for(lambda: _readyz(url)["in_flight"] == 0, 5, "the round was released")
    clip = silent_opus(3)

    def post(_: int) -> int:
        r = httpx.post(url + TRANSCRIPTIONS, files={"file": ("a.opus", clip)}, timeout=60)
        return r.status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(post, range(8))) == [200] * 8


def _replica_pids(dashboard_url: str, app: str, deployment: str) -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard_url, filters=[("state", "=", "ALIVE")], detail=True)
    return [int(a.pid) for a in actors if a.class_name.endswith(f"{app}:{deployment}")]


def _transcriber_pids(dashboard_url: str) -> list[int]:
    return _replica_pids(dashboard_url, RELIABLE_APP, "Transcriber")


class Load:
    """``clients`` threads posting ``clip`` until stopped; every outcome recorded."""

    def __init__(self, url: str, clip: bytes, clients: int = 6) -> None:
        self.outcomes: list[tuple[float, int, str, str]] = []
        self._stop = threading.Event()
        self._url, self._clip = url, clip
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _client(self) -> None:
        with httpx.Client(base_url=self._url, timeout=60) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    r = http.post(TRANSCRIPTIONS, files={"file": ("a.wav", self._clip)})
                except httpx.TimeoutException:
                    self.outcomes.append((started, 0, "hang", ""))
                    continue
                except httpx.TransportError as exc:  # connection cut by the proxy
                    self.outcomes.append((started, -1, type(exc).__name__, ""))
                    continue
                text = r.json().get("text", "") if r.status_code == 200 else r.text[:200]
                self.outcomes.append(
                    (started, r.status_code, text, r.headers.get("retry-after", ""))
                )

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)


def _kill_under_load(
    url: str, clip: bytes, pid: int, started_after: int
) -> tuple[Load, float, float]:
    """SIGKILL ``pid`` once ``started_after`` requests are answered, keep the load on
    until a request sent after the kill succeeds, then 3 s more while Serve replaces
    the process; (the load, when it was killed, seconds to the first success)."""
    with Load(url, clip) as load:
        _wait_for(lambda: len(load.outcomes) >= started_after, 60, "load started")
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        _wait_for(
            lambda: any(t > killed_at and s == 200 for t, s, _, _ in load.outcomes),
            30,
            "a request sent after the kill succeeded",
        )
        recovery_s = time.monotonic() - killed_at
        time.sleep(3.0)
    return load, killed_at, recovery_s


def test_killing_a_transcriber_replica_under_load_fails_nothing(serve_cluster, speech):
    """Pass: with two Transcriber replicas and requests in flight, SIGKILL of one gives
    only 200s with the right transcript or 503s with Retry-After (the killed replica's
    chunks are sent once more, to the other), never a 500 or a hang; a request
    succeeds within 30 s of the kill, and Serve brings the replica back."""
    url = serve_cluster.reliable_url
    clip = wav_bytes(speech(30.0, 11))  # two chunks
    expected = httpx.post(url + TRANSCRIPTIONS, files={"file": ("a.wav", clip)}, timeout=120)
    assert expected.status_code == 200
    pids = _transcriber_pids(serve_cluster.dashboard_url)
    assert len(pids) == 2, pids

    load, _, recovery_s = _kill_under_load(url, clip, pids[0], started_after=6)
    outcomes = [(s, text, ra) for _, s, text, ra in load.outcomes]
    statuses = {s for s, _, _ in outcomes}
    assert statuses <= {200, 503}, [o for o in outcomes if o[0] not in (200, 503)][:3]
    assert all(ra for s, _, ra in outcomes if s == 503)
    assert all(text == expected.json()["text"] for s, text, _ in outcomes if s == 200)
    assert recovery_s < 30
    print(
        f"\nSIGKILL of a Transcriber replica under load: {len(outcomes)} requests, "
        f"statuses {sorted(statuses)}, first 200 after the kill in {recovery_s:.2f} s"
    )
    _wait_for(
        lambda: len(_transcriber_pids(serve_cluster.dashboard_url)) == 2,
        120,
        "Serve replaced the killed replica",
    )


def test_killing_one_of_two_ingress_replicas_leaves_the_other_serving(serve_cluster, speech):
    """Pass: SIGKILL of one Ingress replica under load fails at most the requests that
    were in flight on it (6 clients: at most 6), every request sent after the kill
    has been noticed succeeds, and one does within 30 s. Its own clients' outcomes are
    printed: Ray's proxy answers for a replica that died mid-request."""
    url = serve_cluster.two_ingress_url
    clip = wav_bytes(speech(10.0, 12))
    expected = httpx.post(url + TRANSCRIPTIONS, files={"file": ("a.wav", clip)}, timeout=120)
    assert expected.status_code == 200
    pids = _replica_pids(serve_cluster.dashboard_url, TWO_INGRESS_APP, "Ingress")
    assert len(pids) == 2, pids
    load, killed_at, recovery_s = _kill_under_load(url, clip, pids[0], started_after=12)
    failed = [(t, s, text) for t, s, text, _ in load.outcomes if s != 200]
    assert len(failed) <= 6, failed
    assert all(t < killed_at + 5 for t, _, _ in failed), "a failure long after the kill"
    right = expected.json()["text"]
    assert all(text == right for _, s, text, _ in load.outcomes if s == 200)
    print(
        f"\nSIGKILL of one of two Ingress replicas: {len(load.outcomes)} requests, "
        f"{len(failed)} failed ({sorted({s for _, s, _ in failed})}: "
        f"{sorted({text[:80] for _, _, text in failed})}), first 200 after the kill in "
        f"{recovery_s:.2f} s"
    )


def _reliable_batch_size() -> int:
    from ray import serve

    handle = serve.get_deployment_handle("Transcriber", app_name=RELIABLE_APP)
    return handle.stats.remote().result(timeout_s=30)["max_batch_size"]


def test_a_user_config_change_under_load_fails_nothing_and_restarts_nothing(serve_cluster, speech):
    """Pass: ``serve deploy`` of a new batching ``user_config`` while requests flow: every
    request 200 with the right text, and the Transcriber replicas are the same
    processes afterwards (the change went through ``reconfigure``)."""
    url = serve_cluster.reliable_url
    clip = wav_bytes(speech(10.0, 13))
    expected = httpx.post(url + TRANSCRIPTIONS, files={"file": ("a.wav", clip)}, timeout=120)
    pids = sorted(_transcriber_pids(serve_cluster.dashboard_url))
    try:
        with Load(url, clip) as load:
            _wait_for(lambda: len(load.outcomes) >= 6, 60, "load started")
            serve_cluster.apply(
                reliable_batching={"max_batch_size": 4, "batch_wait_timeout_s": 0.02}
            )
            _wait_for(lambda: _reliable_batch_size() == 4, 60, "the new batch size applied")
            time.sleep(2.0)
    finally:
        serve_cluster.apply()
    statuses = sorted({s for _, s, _, _ in load.outcomes})
    assert statuses == [200], [o for o in load.outcomes if o[1] != 200][:3]
    assert all(text == expected.json()["text"] for _, _, text, _ in load.outcomes)
    assert sorted(_transcriber_pids(serve_cluster.dashboard_url)) == pids


def test_an_args_change_rolls_out_new_replicas_under_load_without_5xx(serve_cluster, speech):
    """Pass: ``serve deploy`` with changed ``args`` replaces every replica of the
    two-Ingress app (new processes) while requests flow, and no request gets a 5xx, a
    dropped connection or a hang: old Ingress replicas drain (their graceful shutdown
    outlasts the longest request) while new ones take the traffic."""
    url = serve_cluster.two_ingress_url
    clip = wav_bytes(speech(10.0, 14))
    expected = httpx.post(url + TRANSCRIPTIONS, files={"file": ("a.wav", clip)}, timeout=120)
    before = set(_replica_pids(serve_cluster.dashboard_url, TWO_INGRESS_APP, "Ingress"))
    assert len(before) == 2, before

    def rolled_out() -> bool:
        now = set(_replica_pids(serve_cluster.dashboard_url, TWO_INGRESS_APP, "Ingress"))
        return len(now) == 2 and not now & before

    try:
        with Load(url, clip) as load:
            _wait_for(lambda: len(load.outcomes) >= 6, 60, "load started")
            started = time.monotonic()
            serve_cluster.apply(two_ingress_args={"retry_after_s": 3})  # waits for RUNNING
            _wait_for(rolled_out, 180, "new Ingress replicas replaced the old")
            took = time.monotonic() - started
            time.sleep(3.0)
    finally:
        serve_cluster.apply()
    bad = [o for o in load.outcomes if o[1] != 200]
    assert not bad, bad[:3]
    assert all(text == expected.json()["text"] for _, _, text, _ in load.outcomes)
    print(
        f"\nargs redeploy under load: {len(load.outcomes)} requests, all 200; "
        f"rolled out in {took:.1f} s"
    )
