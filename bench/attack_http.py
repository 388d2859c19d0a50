"""The HTTP-level attacks ``python -m bench.attack live`` runs against a live server.

Each attack returns ``Outcome``s: what was sent, the pass criterion, whether it held
and what came back. They only ever talk to 127.0.0.1, are bounded in count and time,
and leave nothing running. The same attacks, smaller and without a live server, are in
``tests/security/`` and ``tests/serve/``; this runner exists to aim them at a real
deployment (``make run``, the Docker image) the way an outsider would.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import av
import httpx
import numpy as np

from tests.security.canary import Canary

ROOT = Path(__file__).resolve().parents[1]
TRANSCRIPTIONS = "/v1/audio/transcriptions"
REAL_CLIP = ROOT / "tests" / "data" / "demo" / "heldout_00.opus"


@dataclass
class Outcome:
    attack: str
    criterion: str
    passed: bool
    detail: str


@dataclass
class Target:
    """A live server and what the runner knows about its configuration."""

    url: str
    api_key: str | None
    allowed_origin: str | None
    max_audio_seconds: float
    body_grace_s: float

    def __post_init__(self) -> None:
        host = urlsplit(self.url).hostname
        if host not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError(f"attacks only go to this machine, not {host!r}")

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, headers=self.auth)


def _openai_error(response: httpx.Response) -> dict[str, Any] | None:
    """The ``error`` object when the body is OpenAI's error shape, else None."""
    try:
        error = response.json().get("error")
    except ValueError:
        return None
    keys = {"message", "type", "param", "code"}
    return error if isinstance(error, dict) and set(error) == keys else None


def _upload(client: httpx.Client, data: bytes, name: str = "a.wav", **fields: Any):
    files = {"file": (name, data, "application/octet-stream")}
    return client.post(TRANSCRIPTIONS, files=files, data={"model": "whisper-1", **fields})


def _summary(response: httpx.Response) -> str:
    error = _openai_error(response)
    code = error["code"] if error else response.text[:60]
    return f"{response.status_code} {code}"


# --------------------------------------------------------------------------- playlists


def _playlists(canary: Path) -> dict[str, bytes]:
    """Uploads that ask FFmpeg to open something other than themselves."""
    relative = REAL_CLIP.relative_to(ROOT)
    dotdot = Path("..") / ROOT.name / relative
    absolute = REAL_CLIP
    return {
        "ffconcat, relative path to a served clip": f"ffconcat version 1.0\nfile {relative}\n",
        "ffconcat, quoted '..' path": f"ffconcat version 1.0\nfile '{dotdot}'\n",
        "ffconcat, absolute path": f"ffconcat version 1.0\nfile '{absolute}'\n",
        "ffconcat, the canary": f"ffconcat version 1.0\nfile '{canary}'\n",
        "ffconcat, file: URL": f"ffconcat version 1.0\nfile 'file:{canary}'\n",
        "ffconcat, concat: protocol": (
            f"ffconcat version 1.0\nfile 'concat:{canary}|{absolute}'\n"
        ),
        "HLS playlist": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{canary}\n"
        "#EXT-X-ENDLIST\n",
        "SDP over RTP": "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\n"
        "m=audio 9 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n",
    }


def playlists(target: Target) -> Iterator[Outcome]:
    criterion = "4xx, no transcript, the canary FIFO is never opened"
    with (
        tempfile.TemporaryDirectory() as folder,
        Canary(Path(folder) / "canary.opus") as canary,
        target.client() as client,
    ):
        for name, text in _playlists(canary.path).items():
            for filename in ("x.txt", "x.wav"):
                response = _upload(client, text.encode(), filename)
                time.sleep(0.05)  # an open would show within milliseconds
                passed = (
                    400 <= response.status_code < 500
                    and "text" not in response.text[:20]
                    and not canary.opened
                )
                detail = _summary(response) + (", canary opened" if canary.opened else "")
                yield Outcome(f"{name} (as {filename})", criterion, passed, detail)


# --------------------------------------------------------------------------- headers


def reserved_headers(target: Target) -> Iterator[Outcome]:
    clip = REAL_CLIP.read_bytes()
    cases = {
        "x-request-timeout-seconds: 0 (disable the timeout)": {"x-request-timeout-seconds": "0"},
        "x-request-timeout-seconds: 1e6 (extend it)": {"x-request-timeout-seconds": "1e6"},
        "x-request-disconnect-disabled: ?1": {"x-request-disconnect-disabled": "?1"},
        "x_request_timeout_seconds: -1 (underscores)": {"x_request_timeout_seconds": "-1"},
        "serve_multiplexed_model_id (routing)": {"serve_multiplexed_model_id": "x"},
        "x-serve-router-* (routing)": {"x-serve-router-replica": "x"},
    }
    with target.client() as client:
        for name, headers in cases.items():
            response = client.post(
                TRANSCRIPTIONS, files={"file": ("a.opus", clip)}, headers=headers
            )
            error = _openai_error(response)
            passed = (
                response.status_code == 400 and bool(error) and error["code"] == ("reserved_header")
            )
            yield Outcome(name, "400 reserved_header, no work done", passed, _summary(response))


# --------------------------------------------------------------------------- traversal

MODEL_NAMES = [
    "../../../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "/etc/passwd",
    "models/demo",
    "demo%2F..%2Fdemo",
    "C:\\Windows\\win.ini",
    "x" * 4000,
    "\u202emodel\u0000",
    "\U0001f600" * 200,
]


def traversal(target: Target) -> Iterator[Outcome]:
    criterion = "404 in OpenAI's shape (the form: model_not_found), message < 300 chars"
    with target.client() as client:
        for name in MODEL_NAMES:
            shown = repr(name[:40]) + ("..." if len(name) > 40 else "")
            for how, response in (
                ("GET /v1/models/{id}", client.get("/v1/models/" + quote(name, safe="/.%"))),
                ("form model=", _upload(client, REAL_CLIP.read_bytes(), "a.opus", model=name)),
            ):
                error = _openai_error(response)
                passed = (
                    response.status_code == 404
                    and bool(error)
                    and (how.startswith("GET") or error["code"] == "model_not_found")
                    and len(error["message"]) < 300
                    and "root:" not in response.text
                )
                yield Outcome(f"{how} {shown}", criterion, passed, _summary(response))


# --------------------------------------------------------------------------- auth


def auth(target: Target) -> Iterator[Outcome]:
    if not target.api_key:
        yield Outcome("auth", "server has a key", True, "skipped: no --api-key given")
        return
    key = target.api_key
    wrong_same_length = ("A" if key[0] != "A" else "B") + key[1:]
    attempts = {
        "no Authorization": {},
        "wrong key, same length": {"Authorization": f"Bearer {wrong_same_length}"},
        "key with a suffix": {"Authorization": f"Bearer {key}x"},
        "key as Basic": {"Authorization": f"Basic {key}"},
        "empty Bearer": {"Authorization": "Bearer"},
    }
    routes = ["/v1/models", "/v1/models/whisper-1", "/openapi.json", "/docs", "/metrics"]
    with httpx.Client(base_url=target.url, timeout=30) as client:
        for name, headers in attempts.items():
            answers = [client.get(route, headers=headers) for route in routes]
            answers.append(
                client.post(TRANSCRIPTIONS, files={"file": ("a.wav", b"x")}, headers=headers)
            )
            answers.append(client.get(f"/v1/models?api_key={key}", headers=headers))
            bad = [
                f"{r.request.url.path} {r.status_code}"
                for r in answers
                if r.status_code != 401 or r.headers.get("www-authenticate") != "Bearer"
            ]
            yield Outcome(
                f"{name}: every route but health",
                "401 with WWW-Authenticate: Bearer",
                not bad,
                "; ".join(bad) or f"{len(answers)} x 401",
            )
        health = [client.get(p).status_code for p in ("/healthz", "/readyz")]
        right = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    yield Outcome(
        "health probes open, the right key works",
        "200 for /healthz, /readyz and the keyed /v1/models",
        health == [200, 200] and right.status_code == 200,
        f"health {health}, keyed {right.status_code}",
    )


# --------------------------------------------------------------------------- CORS


def cors(target: Target) -> Iterator[Outcome]:
    if not target.allowed_origin:
        yield Outcome("CORS", "an allowed origin", True, "skipped: no --origin given")
        return
    good, evil = target.allowed_origin, "http://evil.example"
    preflight = {"Access-Control-Request-Method": "POST"}
    over = silent_opus(target.max_audio_seconds + 60)
    with httpx.Client(base_url=target.url, timeout=60) as client:
        for origin in (good, evil):
            answer = client.options(TRANSCRIPTIONS, headers={"Origin": origin, **preflight})
            allowed = answer.headers.get("access-control-allow-origin")
            expected = origin if origin == good else None
            yield Outcome(
                f"preflight from {origin}",
                f"Access-Control-Allow-Origin {expected or 'absent'}, no credentials",
                allowed == expected and "access-control-allow-credentials" not in answer.headers,
                f"{answer.status_code}, allow-origin {allowed}",
            )
        keyed = dict(target.auth)
        errors = {
            "401": lambda h: client.get("/v1/models", headers=h),
            "415": lambda h: client.post(
                TRANSCRIPTIONS, files={"file": ("a.wav", b"junk" * 100)}, headers={**keyed, **h}
            ),
            "413": lambda h: client.post(
                TRANSCRIPTIONS, files={"file": ("a.opus", over)}, headers={**keyed, **h}
            ),
            "404": lambda h: client.get("/v1/models/nope", headers={**keyed, **h}),
        }
        if not target.api_key:
            del errors["401"]
        for status, send in errors.items():
            for origin in (good, evil):
                answer = send({"Origin": origin})
                allowed = answer.headers.get("access-control-allow-origin")
                expected = origin if origin == good else None
                yield Outcome(
                    f"{status} seen from {origin}",
                    f"status {status}, Access-Control-Allow-Origin {expected or 'absent'}",
                    str(answer.status_code) == status and allowed == expected,
                    f"{answer.status_code}, allow-origin {allowed}",
                )


# --------------------------------------------------------------------------- slow bodies


async def _trickle(host: str, port: int, path: str, auth: dict[str, str], seconds: float):
    """A multipart body declared at 200 kB, sent 10 bytes a second; (status, seconds)."""
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: multipart/form-data; boundary=b",
        "Content-Length: 200000",
        *(f"{k}: {v}" for k, v in auth.items()),
    ]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    writer.write(b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n')
    status = 0
    try:
        while time.monotonic() - started < seconds:
            writer.write(b"\x00" * 10)
            await writer.drain()
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=1.0)
            except TimeoutError:
                continue
            if line:
                status = int(line.split()[1])
            break
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
    return status, time.monotonic() - started


async def _slow_bodies(target: Target, clients: int) -> tuple[list[tuple[int, float]], int, float]:
    parts = urlsplit(target.url)
    path = (parts.path.rstrip("/") or "") + TRANSCRIPTIONS
    bound = target.body_grace_s + 20
    tricklers = [
        asyncio.create_task(_trickle(parts.hostname, parts.port, path, target.auth, bound))
        for _ in range(clients)
    ]
    await asyncio.sleep(1.0)  # every trickler is connected and holding its upload
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=target.url, timeout=60, headers=target.auth) as c:
        normal = await c.post(TRANSCRIPTIONS, files={"file": ("a.opus", REAL_CLIP.read_bytes())})
    normal_s = time.monotonic() - started
    return list(await asyncio.gather(*tricklers)), normal.status_code, normal_s


def slow_bodies(target: Target, clients: int = 24) -> Iterator[Outcome]:
    cut, normal_status, normal_s = asyncio.run(_slow_bodies(target, clients))
    yield Outcome(
        f"a normal upload while {clients} bodies trickle at 10 B/s",
        "200",
        normal_status == 200,
        f"{normal_status} in {normal_s:.1f} s",
    )
    statuses = sorted({status for status, _ in cut})
    slowest = max(seconds for _, seconds in cut)
    yield Outcome(
        f"{clients} trickling bodies",
        f"each cut with 408 within body_grace_s + 5 s ({target.body_grace_s + 5:g} s)",
        statuses == [408] and slowest <= target.body_grace_s + 5,
        f"statuses {statuses}, last cut after {slowest:.1f} s",
    )


# --------------------------------------------------------------------------- sizes


def silent_opus(seconds: float) -> bytes:
    """Digital silence in Ogg/Opus: about 1.4 MB per hour of audio."""
    buffer = io.BytesIO()
    frame = 960  # 20 ms at 48 kHz
    silence = np.zeros((1, frame), np.float32)
    with av.open(buffer, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48000, layout="mono")
        for k in range(int(seconds * 48000 / frame)):
            chunk = av.AudioFrame.from_ndarray(silence, format="flt", layout="mono")
            chunk.sample_rate, chunk.pts = 48000, k * frame
            out.mux(stream.encode(chunk))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def _raw_status(target: Target, head: list[str], body: bytes) -> tuple[int, float]:
    """Send a request by hand (to declare what httpx would not) and read the status."""
    parts = urlsplit(target.url)
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        lines = [*head, f"Host: {parts.hostname}", *(f"{k}: {v}" for k, v in target.auth.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        status = int(sock.recv(4096).split(b" ", 2)[1])
    return status, time.monotonic() - started


def sizes(target: Target) -> Iterator[Outcome]:
    over = silent_opus(target.max_audio_seconds + 60)
    with target.client() as client:
        started = time.monotonic()
        response = _upload(client, over, "long.opus")
        seconds = time.monotonic() - started
    yield Outcome(
        f"{len(over)} B silent Opus, {target.max_audio_seconds + 60:g} s of audio",
        "413 within 10 s, before decoding it",
        response.status_code == 413 and seconds < 10,
        f"{_summary(response)} in {seconds:.2f} s",
    )
    path = urlsplit(target.url).path.rstrip("/") + TRANSCRIPTIONS
    head = [
        f"POST {path} HTTP/1.1",
        "Content-Type: multipart/form-data; boundary=b",
        "Content-Length: 1000000000000",
    ]
    status, seconds = _raw_status(target, head, b"--b\r\n")
    yield Outcome(
        "Content-Length: 1 TB, 5 bytes sent",
        "413 at once, the body never read",
        status == 413 and seconds < 5,
        f"{status} in {seconds:.2f} s",
    )


# --------------------------------------------------------------------------- malformed


def _wav(channels: int, rate: int, bits: int, data: bytes, declared: int | None = None) -> bytes:
    size = len(data) if declared is None else declared
    fmt = struct.pack(
        "<HHIIHH", 1, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits
    )
    return (
        b"RIFF" + struct.pack("<I", min(36 + size, 0xFFFFFFFF)) + b"WAVE"
        + b"fmt " + struct.pack("<I", 16) + fmt
        + b"data" + struct.pack("<I", size) + data
    )  # fmt: skip


MALFORMED: dict[str, Callable[[], bytes]] = {
    "random bytes": lambda: os.urandom(50_000),
    "zero bytes": lambda: b"",
    "WAV, 0 Hz": lambda: _wav(1, 0, 16, b"\x00" * 32000),
    "WAV, 255 channels": lambda: _wav(255, 16000, 16, b"\x01" * 51000),
    "WAV, 768 kHz": lambda: _wav(1, 768000, 16, b"\x01" * 64000),
    "WAV, declares 4 GB of data": lambda: _wav(1, 16000, 16, b"\x01" * 3200, 0xFFFFFFF0),
    "WAV, 13-bit samples": lambda: _wav(1, 16000, 13, b"\x01" * 3200),
    "Ogg/Opus cut in half": lambda: REAL_CLIP.read_bytes()[: REAL_CLIP.stat().st_size // 2],
    "Ogg/Opus, header bytes flipped": lambda: bytes(
        b ^ 0xFF if 28 <= i < 60 else b for i, b in enumerate(REAL_CLIP.read_bytes())
    ),
}


def malformed(target: Target) -> Iterator[Outcome]:
    with target.client() as client:
        for name, make in MALFORMED.items():
            response = _upload(client, make(), "a.wav")
            ok = response.status_code == 200 or (
                400 <= response.status_code < 500 and _openai_error(response) is not None
            )
            yield Outcome(name, "a typed 4xx, or 200 if it is still audio", ok, _summary(response))


def still_serving(target: Target) -> Iterator[Outcome]:
    with target.client() as client:
        health = client.get("/healthz").status_code
        response = _upload(client, REAL_CLIP.read_bytes(), "heldout_00.opus")
    text = response.json().get("text", "") if response.status_code == 200 else ""
    yield Outcome(
        "after every attack: health and a real clip",
        "/healthz 200, the clip transcribed",
        health == 200 and response.status_code == 200 and bool(text),
        f"health {health}, {response.status_code} {text[:40]!r}",
    )


ATTACKS: dict[str, Callable[[Target], Iterator[Outcome]]] = {
    "playlists": playlists,
    "headers": reserved_headers,
    "traversal": traversal,
    "auth": auth,
    "cors": cors,
    "slow-bodies": slow_bodies,
    "sizes": sizes,
    "malformed": malformed,
    "still-serving": still_serving,
}


def run_all(target: Target, names: list[str]) -> list[Outcome]:
    """The chosen attacks in order, ``still-serving`` last whatever was chosen."""
    outcomes: list[Outcome] = []
    for name in [n for n in names if n != "still-serving"] + ["still-serving"]:
        outcomes.extend(ATTACKS[name](target))
    return outcomes


def as_rows(outcomes: list[Outcome]) -> list[list[object]]:
    return [[o.attack, o.criterion, "pass" if o.passed else "FAIL", o.detail] for o in outcomes]
