"""What the fault tests (and the metrics test, which needs a fault) share: polling the
app's readiness report, raw uploads whose client leaves when the test says, replica
PIDs, and a bounded load to kill replicas under."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from serve_helpers import RELIABLE_APP

TRANSCRIPTIONS = "/v1/audio/transcriptions"


def readyz(url: str) -> dict[str, Any]:
    return httpx.get(url + "/readyz", timeout=30).json()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until ``condition()`` held (polled every 20 ms)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what} within {timeout_s} s"
        time.sleep(0.02)
    return time.monotonic() - started


def raw_upload(url: str, audio: bytes, **fields: str) -> socket.socket:
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


def replica_pids(dashboard_url: str, app: str, deployment: str) -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard_url, filters=[("state", "=", "ALIVE")], detail=True)
    return [int(a.pid) for a in actors if a.class_name.endswith(f"{app}:{deployment}")]


def transcriber_pids(dashboard_url: str) -> list[int]:
    return replica_pids(dashboard_url, RELIABLE_APP, "Transcriber")


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


def kill_under_load(
    url: str, clip: bytes, pid: int, started_after: int
) -> tuple[Load, float, float]:
    """SIGKILL ``pid`` once ``started_after`` requests are answered, keep the load on
    until a request sent after the kill succeeds, then 3 s more while Serve replaces
    the process; (the load, when it was killed, seconds to the first success)."""
    with Load(url, clip) as load:
        wait_for(lambda: len(load.outcomes) >= started_after, 60, "load started")
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(
            lambda: any(t > killed_at and s == 200 for t, s, _, _ in load.outcomes),
            30,
            "a request sent after the kill succeeded",
        )
        recovery_s = time.monotonic() - killed_at
        time.sleep(3.0)
    return load, killed_at, recovery_s
