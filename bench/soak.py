#!/usr/bin/env python3
"""Soak: mixed traffic for a while, every response checked, every process's RSS sampled.

Traffic, as open-loop arrivals at ``--fraction`` of the capacity measured first
(closed-loop clients for a few seconds): valid clips of several lengths and formats
(wav, flac, mp3, ogg/opus, webm/opus, m4a/aac) in three decoding modes and two
verbatimicities, the same as SSE streams, invalid uploads, clients that leave mid-upload
and clients that leave mid-stream. Every 200 must equal that variant's solo transcript
(taken one request at a time before the soak), every stream's final text too; invalid
uploads must be 415; the only other answer allowed is 503 with Retry-After.

RSS of every Serve process (replicas, proxy, controller) is sampled; growth after the
warm-up (first quarter) must stay under 100 MB per process. ``--leak-kb`` is the
negative control: it starts the app with ``REVERB_SERVE_TEST_LEAK_KB`` set, which makes
the Ingress keep that much per request, and the detector must flag it.

    python -m bench.soak --seconds 1800                 # the 30-minute run
    python -m bench.soak --seconds 120 --fraction 2.0   # overload: shed, never wrong
    python -m bench.soak --seconds 90 --leak-kb 2048    # negative control: must FAIL
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from bench._common import emit, load_avg, machine, md_table, served_app
from serve_app.engine.audio import decode_audio
from tests.audio_files import encode_channels

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "demo"
PATH = "/v1/audio/transcriptions"
LEAK_ENV = "REVERB_SERVE_TEST_LEAK_KB"
RSS_LIMIT_MB = 100.0
FORMATS = {
    "wav": ("wav", "pcm_s16le"),
    "flac": ("flac", "flac"),
    "mp3": ("mp3", "libmp3lame"),
    "ogg": ("ogg", "libopus"),
    "webm": ("webm", "libopus"),
    "m4a": ("mp4", "aac"),
}
MODES = ["ctc_prefix_beam_search", "attention_rescoring", "ctc_greedy_search"]


@dataclass(frozen=True)
class Variant:
    clip: str
    fmt: str
    mode: str
    verbatimicity: float
    data: bytes

    @property
    def fields(self) -> dict[str, str]:
        return {
            "model": "whisper-1",
            "decoding_mode": self.mode,
            "verbatimicity": str(self.verbatimicity),
        }


def variants(seed: int = 0) -> list[Variant]:
    """Clips of 3-5 s, one of 25 s and one of 50 s, each in a few formats and modes."""
    rng = random.Random(seed)
    sources = {
        p.stem: decode_audio(p.read_bytes()) for p in sorted(DATA.glob("heldout_0*.opus"))[:4]
    }
    long_form = decode_audio((DATA / "long_form.opus").read_bytes())
    sources["long25"] = long_form[: 25 * 16000]
    sources["long50"] = long_form[25 * 16000 : 75 * 16000]
    out = []
    for name, samples in sources.items():
        for fmt in rng.sample(sorted(FORMATS), 2):
            container, codec = FORMATS[fmt]
            data = encode_channels(samples[None, :].astype(np.float32), 16000, container, codec)
            out.append(Variant(name, fmt, rng.choice(MODES), rng.choice([0.0, 1.0]), data))
    return out


def _solo(url: str, all_variants: list[Variant]) -> dict[Variant, str]:
    with httpx.Client(base_url=url, timeout=300) as client:
        texts = {}
        for v in all_variants:
            response = client.post(PATH, files={"file": (f"a.{v.fmt}", v.data)}, data=v.fields)
            response.raise_for_status()
            texts[v] = response.json()["text"]
        return texts


class Tally:
    """Every outcome by kind, and the ones that break a promise."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.broken: list[str] = []
        self.shed_seconds: dict[str, list[float]] = {}

    def ok(self, kind: str, what: str) -> None:
        self.counts[(kind, what)] += 1

    def shed(self, kind: str, seconds: float) -> None:
        """A 503 with Retry-After, ``seconds`` after the request was sent."""
        self.ok(kind, "503 shed")
        self.shed_seconds.setdefault(kind, []).append(seconds)

    def bad(self, kind: str, what: str) -> None:
        self.counts[(kind, what)] += 1
        if len(self.broken) < 20:
            self.broken.append(f"{kind}: {what}")

    @property
    def broken_count(self) -> int:
        return sum(n for (kind, what), n in self.counts.items() if what.startswith("BAD"))


async def _valid(client: httpx.AsyncClient, v: Variant, solo: str, tally: Tally) -> None:
    started = time.monotonic()
    try:
        r = await client.post(PATH, files={"file": (f"a.{v.fmt}", v.data)}, data=v.fields)
    except httpx.HTTPError as exc:
        tally.bad("valid", f"BAD lost ({type(exc).__name__})")
        return
    _check_answer("valid", r, solo, tally, time.monotonic() - started)


def _check_answer(kind: str, r: httpx.Response, solo: str, tally: Tally, seconds: float) -> None:
    if r.status_code == 200:
        if r.json().get("text") == solo:
            tally.ok(kind, "200 right")
        else:
            tally.bad(kind, f"BAD mixed up: {r.text[:80]!r} != {solo[:80]!r}")
    elif r.status_code == 503 and r.headers.get("retry-after"):
        tally.shed(kind, seconds)
    else:
        tally.bad(kind, f"BAD {r.status_code} {r.text[:80]}")


async def _stream(client: httpx.AsyncClient, v: Variant, solo: str, tally: Tally, leave: bool):
    kind = "sse-leave" if leave else "sse"
    started = time.monotonic()
    data = {**v.fields, "stream": "true"}
    try:
        async with client.stream(
            "POST", PATH, files={"file": ("a." + v.fmt, v.data)}, data=data
        ) as r:
            if r.status_code != 200:
                await r.aread()
                _check_answer(kind, r, solo, tally, time.monotonic() - started)
                return
            final = None
            async for line in r.aiter_lines():
                if leave and line.startswith("data:"):
                    tally.ok(kind, "left mid-stream")
                    return  # closing the stream is the client leaving
                if '"transcript.text.done"' in line:
                    final = line
            text = json.loads(final[len("data: ") :])["text"] if final else None
            if text == solo:
                tally.ok(kind, "200 right")
            else:
                tally.bad(kind, f"BAD stream text {text!r} != {solo!r}")
    except httpx.HTTPError as exc:
        tally.bad(kind, f"BAD lost ({type(exc).__name__})")


async def _invalid(client: httpx.AsyncClient, tally: Tally, rng: random.Random) -> None:
    junk = rng.randbytes(rng.randint(100, 20000))
    started = time.monotonic()
    try:
        r = await client.post(PATH, files={"file": ("a.wav", junk)}, data={"model": "whisper-1"})
    except httpx.HTTPError as exc:
        tally.bad("invalid", f"BAD lost ({type(exc).__name__})")
        return
    if r.status_code == 415:
        tally.ok("invalid", "415")
    elif r.status_code == 503 and r.headers.get("retry-after"):
        tally.shed("invalid", time.monotonic() - started)
    else:
        tally.bad("invalid", f"BAD {r.status_code}")


async def _leave_mid_upload(url: str, v: Variant, tally: Tally) -> None:
    """Declare the whole body, send half, hang up."""
    target = urlsplit(url)
    try:
        _reader, writer = await asyncio.open_connection(target.hostname, target.port)
        head = (
            f"POST {target.path}{PATH} HTTP/1.1\r\nHost: {target.hostname}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {len(v.data) + 200}\r\n\r\n"
        )
        writer.write(head.encode() + b'--b\r\nContent-Disposition: form-data; name="file"; '
                     b'filename="a.wav"\r\n\r\n' + v.data[: len(v.data) // 2])  # fmt: skip
        await writer.drain()
        writer.close()
        tally.ok("leave-upload", "left mid-upload")
    except OSError as exc:
        tally.bad("leave-upload", f"BAD could not connect ({exc})")


class RssSampler(threading.Thread):
    """Every ``every_s``, the RSS of each live Serve process (found through Ray's state API)."""

    def __init__(self, dashboard_url: str, every_s: float = 2.0) -> None:
        super().__init__(daemon=True)
        self._dashboard = dashboard_url
        self._every_s = every_s
        self.samples: dict[str, list[tuple[float, float]]] = {}
        self._halt = threading.Event()

    def _processes(self) -> dict[str, int]:
        from ray.util.state import list_actors

        actors = list_actors(
            address=self._dashboard, filters=[("state", "=", "ALIVE")], detail=True
        )
        return {
            f"{a.class_name}#{a.pid}": int(a.pid)
            for a in actors
            if a.class_name.startswith(("ServeReplica", "ProxyActor", "ServeController"))
        }

    def run(self) -> None:
        started = time.monotonic()
        while not self._halt.is_set():
            for name, pid in self._processes().items():
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            rss = int(line.split()[1]) / 1024
                            self.samples.setdefault(name, []).append(
                                (time.monotonic() - started, rss)
                            )
            self._halt.wait(self._every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def growth_mb(self, warmup_s: float) -> dict[str, float]:
        """Per process: the median of its last three samples minus the median of its first
        three after the warm-up (processes that did not live through it are left out)."""
        growth = {}
        for name, points in self.samples.items():
            after = [rss for t, rss in points if t >= warmup_s]
            if len(after) >= 6:
                growth[name] = statistics.median(after[-3:]) - statistics.median(after[:3])
        return growth


async def _traffic(url: str, rate: float, seconds: float, pool: list[Variant],
                   solo: dict[Variant, str], seed: int) -> Tally:  # fmt: skip
    rng = random.Random(seed)
    tally = Tally()
    limits = httpx.Limits(max_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        tasks: set[asyncio.Task] = set()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(rng.expovariate(rate))
            if len(tasks) >= 256:
                tally.ok("client", "skipped: 256 in flight")
                continue
            v = rng.choice(pool)
            roll = rng.random()
            if roll < 0.60:
                job = _valid(client, v, solo[v], tally)
            elif roll < 0.75:
                job = _stream(client, v, solo[v], tally, leave=False)
            elif roll < 0.85:
                job = _invalid(client, tally, rng)
            elif roll < 0.925:
                job = _leave_mid_upload(url, v, tally)
            else:
                job = _stream(client, v, solo[v], tally, leave=True)
            task = asyncio.create_task(job)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=300)
    return tally


async def _capacity(url: str, pool: list[Variant], seconds: float = 10.0) -> float:
    """Requests per second that 16 closed-loop clients get through."""
    done = 0
    end = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def loop(i: int) -> None:
            nonlocal done
            k = i
            while time.monotonic() < end:
                v = pool[k % len(pool)]
                k += 1
                r = await client.post(PATH, files={"file": (f"a.{v.fmt}", v.data)}, data=v.fields)
                done += r.status_code == 200

        started = time.monotonic()
        await asyncio.gather(*(loop(i) for i in range(16)))
        return done / (time.monotonic() - started)


def run_soak(url: str, dashboard_url: str | None, *, seconds: float, fraction: float,
             seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """The soak against a running app; ``dashboard_url`` enables RSS sampling."""
    pool = variants(seed)
    solo = _solo(url, pool)
    capacity = asyncio.run(_capacity(url, pool))
    rate = max(fraction * capacity, 0.1)
    sampler = RssSampler(dashboard_url) if dashboard_url else None
    if sampler:
        sampler.start()
    started = time.monotonic()
    try:
        tally = asyncio.run(_traffic(url, rate, seconds, pool, solo, seed))
    finally:
        if sampler:
            sampler.stop()
    wall = time.monotonic() - started
    growth = sampler.growth_mb(warmup_s=seconds / 4) if sampler else {}
    shed = sorted(s for seconds in tally.shed_seconds.values() for s in seconds)
    result = {
        "machine": machine(),
        "load_avg": load_avg(),
        "seconds": wall,
        "capacity_rps": capacity,
        "rate_rps": rate,
        "fraction": fraction,
        "variants": len(pool),
        "outcomes": {f"{k} / {w}": n for (k, w), n in sorted(tally.counts.items())},
        "broken": tally.broken_count,
        "broken_examples": tally.broken,
        "shed_p50_s": shed[len(shed) // 2] if shed else None,
        "shed_p99_s": _p99(shed),
        "shed_p99_s_by_kind": {k: _p99(sorted(v)) for k, v in sorted(tally.shed_seconds.items())},
        "rss_growth_mb": growth,
        "rss_max_growth_mb": max(growth.values(), default=0.0),
    }
    result["passed"] = result["broken"] == 0 and result["rss_max_growth_mb"] < RSS_LIMIT_MB
    return result


def _p99(ordered: list[float]) -> float | None:
    return ordered[max(int(len(ordered) * 0.99) - 1, 0)] if ordered else None


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def report_md(result: dict[str, Any]) -> str:
    rows = [[k, v] for k, v in result["outcomes"].items()]
    growth = [
        [name.split("#")[0], f"{mb:+.0f} MB"]
        for name, mb in sorted(result["rss_growth_mb"].items())
    ]
    shed = result["shed_p99_s"]
    return (
        f"{result['machine']}; load {result['load_avg']}\n\n"
        f"{result['seconds']:.0f} s at {result['rate_rps']:.2f} requests/s = "
        f"{result['fraction']:g} x the measured capacity ({result['capacity_rps']:.2f}/s), "
        f"{result['variants']} clip variants\n\n"
        + md_table(["kind / outcome", "count"], rows)
        + f"\n\nbroken promises: {result['broken']} {result['broken_examples'][:3]}; "
        f"503 p50 / p99 {_ms(result['shed_p50_s'])} / {_ms(shed)}"
        + "".join(f"; {k} p99 {_ms(v)}" for k, v in result["shed_p99_s_by_kind"].items())
        + "\n\n"
        + md_table(["process", "RSS growth after warm-up"], growth)
        + f"\n\npassed: {result['passed']}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--fraction", type=float, default=0.5, help="of the measured capacity")
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    parser.add_argument("--leak-kb", type=int, default=0, help="negative control")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--md", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    env = {LEAK_ENV: str(args.leak_kb)} if args.leak_kb else None
    with served_app(Path(args.config), env_vars=env) as app:
        result = run_soak(app.url, app.dashboard_url, seconds=args.seconds,
                          fraction=args.fraction, seed=args.seed)  # fmt: skip
    result["leak_kb"] = args.leak_kb
    emit(report_md(result), args.md, args.json, result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
