#!/usr/bin/env python3
"""Realtime benchmark: live streams paced at real time, one batched step for all of
them against one stream per step, and sessions end to end through Serve.

1. **Step loop** (the engine only, no Ray), once per arm and stream count N: N streams
   receive audio in 40 ms pieces at real time (their starts spread over one chunk, as
   independent callers' are), and one loop does what the realtime replica's does:
   *batched* takes every stream with a full chunk window and runs one
   ``LiveStepper.step`` for all of them; *one per step* runs a step per ready stream.
   Per chunk: the latency from the moment its last audio piece was due to the end of
   the step that decoded it (queueing included), p50/p95/p99; the mean streams per
   step; and the largest N whose p95 stays under the chunk's duration.
2. **Service** (``--service-streams``): the realtime and transcription apps on a local
   Ray, N WebSocket sessions each streaming held-out clips paced at real time, with a
   pause after each so the server's VAD ends the turn (see ``bench.realtime_service``).

    python -m bench.realtime --model models/demo-live --data tests/data/demo
    python -m bench.realtime --model models/tiny_random --service-streams 0   # no clips
    python -m bench.realtime --model /tmp/full_model --final-model /tmp/full_model \\
        --device cuda --streams 1 16 64 128 256 --service-streams 1 16   # the GPU variant

Without ``--data`` the streams play speech-like noise (a random model has nothing to
recognise), and the service part reports latencies only.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import emit, load_avg, machine, md_table, speech
from serve_app.engine.audio import decode_audio
from serve_app.engine.features import SAMPLE_RATE
from serve_app.live.decoder import LiveStepper, LiveStream

PIECE_S = 0.04
CHUNK_FRAME_S = 0.04  # one encoder frame


@dataclass
class Clip:
    audio: np.ndarray
    text: str
    speech_start: float
    speech_end: float


def load_clips(data: Path | None, kind: str, count: int) -> list[Clip]:
    """Held-out clips of ``kind`` from a demo test-data folder, or speech-like noise."""
    if data is None:
        return [Clip(speech(6.0, seed), "", 0.0, 6.0) for seed in range(count)]
    manifest = json.loads((data / "manifest.json").read_text())["clips"]
    chosen = [c for c in manifest if c["set"] == kind][:count]
    if not chosen:
        raise SystemExit(f"no {kind!r} clips in {data / 'manifest.json'}")
    return [
        Clip(
            decode_audio((data / c["file"]).read_bytes()),
            c["text"],
            c["words"][0]["start"],
            c["words"][-1]["end"],
        )
        for c in chosen
    ]


# --------------------------------------------------------------------------- step loop


@dataclass
class PacedStream:
    """One stream's audio, arriving at real time from ``start_s`` on."""

    stream: LiveStream
    audio: np.ndarray
    start_s: float
    pieces_pushed: int = 0
    ready_at: collections.deque[float] = field(default_factory=collections.deque)

    def push_due(self, now: float, stepper: LiveStepper) -> None:
        """Push every piece due by ``now``; note when each full window became ready."""
        piece = int(PIECE_S * SAMPLE_RATE)
        while True:
            due = self.start_s + (self.pieces_pushed + 1) * PIECE_S
            at = self.pieces_pushed * piece
            if due > now or at >= self.audio.size:
                return
            self.stream.push(self.audio[at : at + piece])
            self.pieces_pushed += 1
            pending = self.stream.frames_ready
            windows = (
                0 if pending < stepper.window else 1 + (pending - stepper.window) // stepper.stride
            )
            while len(self.ready_at) < windows:
                self.ready_at.append(due)

    @property
    def done(self) -> bool:
        return self.pieces_pushed * int(PIECE_S * SAMPLE_RATE) >= self.audio.size


def run_step_loop(
    model: Any, clips: list[Clip], n: int, seconds: float, chunk: int, batched: bool
) -> dict[str, Any]:
    """One arm at N streams; see the module docstring."""
    stepper = LiveStepper(model, chunk)
    chunk_s = chunk * CHUNK_FRAME_S
    length = int(seconds * SAMPLE_RATE)
    streams = []
    for i in range(n):
        audio = np.concatenate([clips[(i + k) % len(clips)].audio for k in range(len(clips))])
        audio = np.resize(audio, length)  # loops the clips to the length
        stream = LiveStream(1.0, beam_size=4, device=model.device)
        streams.append(PacedStream(stream, audio, start_s=chunk_s * i / n))
    latencies: list[float] = []
    batch_sizes: list[int] = []
    t0 = time.perf_counter()
    give_up = 2 * seconds + 5  # an arm that falls behind never catches up
    while not all(s.done and not s.ready_at for s in streams):
        now = time.perf_counter() - t0
        if now > give_up:
            latencies += [now - at for s in streams for at in s.ready_at]
            break
        for s in streams:
            s.push_due(now, stepper)
        ready = [s for s in streams if s.ready_at]
        if not ready:
            time.sleep(0.002)
            continue
        groups = [ready] if batched else [[s] for s in ready]
        for group in groups:
            stepper.step([s.stream for s in group])
            done = time.perf_counter() - t0
            latencies += [done - s.ready_at.popleft() for s in group]
            batch_sizes.append(len(group))
    ms = np.array(latencies) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "streams": n,
        "arm": "batched" if batched else "one per step",
        "chunks": len(latencies),
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "p99_ms": round(float(p99), 1),
        "streams_per_step": round(float(np.mean(batch_sizes)), 2),
        "within_chunk": bool(p95 < chunk_s * 1000),
    }


def sweep(model: Any, clips: list[Clip], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Both arms over ``--streams``; an arm stops one count after it first misses."""
    rows = []
    for batched in (True, False):
        misses = 0
        for n in args.streams:
            row = run_step_loop(model, clips, n, args.seconds, args.chunk, batched)
            print(json.dumps(row), flush=True)
            rows.append(row)
            misses += not row["within_chunk"]
            if misses >= 2:
                break
    return rows


def largest_within(rows: list[dict[str, Any]], arm: str) -> int:
    ok = [r["streams"] for r in rows if r["arm"] == arm and r["within_chunk"]]
    return max(ok, default=0)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a causal Reverb model folder")
    parser.add_argument("--data", type=Path, help="demo test-data folder (held-out clips)")
    parser.add_argument("--kind", default="continuous", help="which clips of --data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument(
        "--chunk", type=int, default=8, choices=(8, 16), help="encoder frames per step"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per stream")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 48, 64])
    parser.add_argument(
        "--service-streams", type=int, nargs="+", default=[1, 4], help="0: skip the service"
    )
    parser.add_argument("--service-clips", type=int, default=6, help="clips per session")
    parser.add_argument(
        "--append-ms",
        type=float,
        default=100,
        help="audio per append in the service's sessions: 100 ms as the page and "
        "examples/realtime_stream.py send (figures before the fifth round used 40)",
    )
    parser.add_argument(
        "--final-model", help="the finals' model (default: configs/local.yaml's, models/demo)"
    )
    parser.add_argument("--md", type=Path)
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import torch

    from serve_app.engine.model import load_model

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    clips = load_clips(args.data, args.kind, 24)
    started = time.time()
    rows = sweep(model, clips, args)
    chunk_ms = args.chunk * CHUNK_FRAME_S * 1000
    batched_n, single_n = largest_within(rows, "batched"), largest_within(rows, "one per step")
    ratio = f"{batched_n / single_n:.1f}x" if single_n else "n/a"
    report = [
        "# Realtime benchmark",
        "",
        f"Machine: {machine()}; load {load_avg()}. Model {args.model} on {args.device}, "
        f"chunk {args.chunk} frames ({chunk_ms:.0f} ms), {args.seconds:g} s of audio per "
        f"stream in {PIECE_S * 1000:.0f} ms pieces.",
        "",
        "## Step loop: one batched step for every ready stream vs one stream per step",
        "",
        md_table(
            [
                "streams",
                "arm",
                "chunks",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "streams/step",
                "p95 < chunk",
            ],
            [list(r.values()) for r in rows],
        ),
        "",
        f"Largest N with p95 under {chunk_ms:.0f} ms: batched {batched_n}, one per step "
        f"{single_n} ({ratio}).",
    ]
    service = None
    if any(args.service_streams):
        from bench.realtime_service import run_service

        service = run_service(args, clips)
        report += ["", service["markdown"]]
    report += ["", f"Total {time.time() - started:.0f} s."]
    result = {"step_loop": rows, "largest": [batched_n, single_n], "service": service}
    emit("\n".join(report), args.md, args.json, result)


if __name__ == "__main__":
    main()
