"""The realtime benchmark's service part: N live sessions through Serve's proxy.

configs/local.yaml's two apps run on a local Ray (what ``make run`` serves), the
realtime one with the benchmark's ``--model``. Each session streams ``--service-clips`` held-out
clips, each followed by 1.2 s of digital silence, as 16 kHz PCM16 in ``--append-ms`` appends
paced at real time, with the server's VAD on (500 ms of silence ends a turn), then commits.
Every event is timed on arrival. Per clip (the turns whose audio overlaps it most):

* time from its speech onset (its first word's start, due at real time) to its first
  delta;
* time from the ``speech_stopped`` event to ``completed``, and from the clip's last
  word's end to ``completed``;
* the partial transcript (its deltas joined) and the final one, each scored against
  the clip's text;
* whether each turn's final equals what ``/v1/audio/transcriptions`` returns for
  exactly that turn's audio (cut at the ``audio_start_ms`` / ``audio_end_ms`` the
  server reported).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jiwer
import numpy as np

from bench._common import REPO_ROOT, app_config, free_ports, local_ray, md_table, wav_bytes
from serve_app.engine.features import SAMPLE_RATE

PAUSE_S = 1.2
QUIET_S = 2.0  # after the last append: no events this long and nothing open means done


@dataclass
class Item:
    start_ms: int | None = None
    end_ms: int | None = None
    stopped_at: float | None = None
    deltas: list[tuple[float, str]] = field(default_factory=list)
    final: str | None = None
    final_at: float | None = None


@dataclass
class SessionLog:
    pcm: np.ndarray  # int16, what was sent
    offsets: list[float]  # each clip's start in the stream
    t0: float = 0.0  # wall time at which sample 0 was due
    items: dict[str, Item] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)


def service_config(args: argparse.Namespace, port: int, sessions: int) -> dict[str, Any]:
    """configs/local.yaml (what ``make run`` serves) on ``port``: partials from
    ``--model``, finals from ``--final-model`` (default: local.yaml's), on ``--device``."""
    config = app_config(REPO_ROOT / "configs" / "local.yaml", port, apps=None, device=args.device)
    gpus = 0.5 if args.device == "cuda" else 0  # both models on the one GPU
    for app in config["applications"]:
        live = app["import_path"].endswith("build_realtime_app")
        if live:
            app["args"].update(model=str(Path(args.model).resolve()), max_sessions=sessions + 4)
        elif args.final_model:
            app["args"]["model"] = str(Path(args.final_model).resolve())
        for deployment in app["deployments"]:
            if deployment["name"] in ("Transcriber", "Realtime"):
                deployment["ray_actor_options"]["num_gpus"] = gpus
            if deployment["name"] == "Realtime":
                deployment["max_ongoing_requests"] = sessions + 12
    return config


Span = tuple[float, float]  # start, end (s)


def speech_spans(clips: list[Any], offsets: list[float]) -> list[Span]:
    """Each clip's speech, in seconds of its session's stream."""
    return [(o + c.speech_start, o + c.speech_end) for o, c in zip(offsets, clips, strict=True)]


def clip_of_each_turn(spans: list[Span], turns: list[Span]) -> list[int]:
    """For each turn, the clip whose speech span it overlaps most."""
    return [int(np.argmax([min(hi, b) - max(lo, a) for a, b in spans])) for lo, hi in turns]


def session_audio(clips: list[Any]) -> tuple[np.ndarray, list[float]]:
    """The clips with a pause after each, as PCM16, and where each clip starts (s)."""
    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), np.float32)
    pieces, offsets, at = [], [], 0
    for clip in clips:
        offsets.append(at / SAMPLE_RATE)
        pieces += [clip.audio, pause]
        at += clip.audio.size + pause.size
    audio = np.concatenate(pieces)
    return (np.clip(audio, -1, 1) * 32767).astype("<i2"), offsets


async def run_session(url: str, log: SessionLog, chunk: int, piece: int) -> None:
    from websockets.asyncio.client import connect

    async with connect(url + "?intent=transcription", open_timeout=60, max_size=None) as ws:
        update = {
            "type": "session.update",
            "session": {
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                        "transcription": {"chunk_size": chunk},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                    }
                },
            },
        }
        await ws.send(json.dumps(update))
        while json.loads(await ws.recv())["type"] != "session.updated":
            pass
        last_event = [time.monotonic()]
        receiver = asyncio.create_task(_receive(ws, log, last_event))
        log.t0 = time.monotonic()
        for i, at in enumerate(range(0, log.pcm.size, piece)):
            await asyncio.sleep(max(0.0, log.t0 + (i + 1) * piece / SAMPLE_RATE - time.monotonic()))
            audio = base64.b64encode(log.pcm[at : at + piece].tobytes()).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "end"}))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            open_items = [i for i in log.items.values() if i.final is None]
            if not open_items and time.monotonic() - last_event[0] > QUIET_S:
                break
        receiver.cancel()


async def _receive(ws: Any, log: SessionLog, last_event: list[float]) -> None:
    async for message in ws:
        now = time.monotonic()
        last_event[0] = now
        event = json.loads(message)
        kind, item_id = event["type"], event.get("item_id")
        item = log.items.setdefault(item_id, Item()) if item_id else None
        if kind == "input_audio_buffer.speech_started":
            item.start_ms = event["audio_start_ms"]
        elif kind == "input_audio_buffer.speech_stopped":
            item.end_ms, item.stopped_at = event["audio_end_ms"], now
        elif kind.endswith("transcription.delta"):
            item.deltas.append((now, event["delta"]))
        elif kind.endswith("transcription.completed"):
            item.final, item.final_at = event["transcript"], now
        elif kind.endswith("transcription.failed") or kind == "error":
            if event.get("error", {}).get("event_id") != "end":  # nothing left to commit
                log.errors.append(event)
            if item is not None:
                item.final = ""


def score(logs: list[SessionLog], clips_per_session: list[list[Any]], base_url: str) -> dict:
    """Per-clip latencies and texts, WERs, and finals against the file API."""
    refs, partials, finals = [], [], []
    first_delta, after_stop, after_speech = [], [], []
    equal = compared = 0
    with httpx.Client(base_url=base_url, timeout=300) as http:
        for log, clips in zip(logs, clips_per_session, strict=True):
            spans = speech_spans(clips, log.offsets)
            owned: list[list[Item]] = [[] for _ in clips]
            items = [i for i in log.items.values() if None not in (i.start_ms, i.end_ms)]
            turns = [(i.start_ms / 1000, i.end_ms / 1000) for i in items]
            for item, clip in zip(items, clip_of_each_turn(spans, turns), strict=True):
                owned[clip].append(item)
                if item.final is not None:
                    cut = log.pcm[item.start_ms * 16 : item.end_ms * 16].astype(np.float32) / 32768
                    files = {"file": ("turn.wav", wav_bytes(cut))}
                    text = http.post("/v1/audio/transcriptions", files=files).json().get("text")
                    equal += text == item.final
                    compared += 1
            for (onset, end), clip, items in zip(spans, clips, owned, strict=True):
                refs.append(clip.text)
                partials.append(" ".join("".join(d for _, d in i.deltas) for i in items))
                finals.append(" ".join(i.final or "" for i in items))
                deltas = [t for i in items for t, _ in i.deltas]
                if deltas:
                    first_delta.append(min(deltas) - (log.t0 + onset))
                done = [i for i in items if i.final_at is not None and i.stopped_at is not None]
                if done:
                    last = max(done, key=lambda i: i.final_at)
                    after_stop.append(last.final_at - last.stopped_at)
                    after_speech.append(last.final_at - (log.t0 + end))
    has_text = any(refs)

    def wer(hyps: list[str]) -> float | None:
        if not has_text:
            return None
        return round(100 * jiwer.wer(refs, [h if h.strip() else "<empty>" for h in hyps]), 2)

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)) * 1000) if values else None

    return {
        "clips": len(refs),
        "partial_wer": wer(partials),
        "final_wer": wer(finals),
        "first_delta_ms": [pct(first_delta, 50), pct(first_delta, 95)],
        "completed_after_stop_ms": [pct(after_stop, 50), pct(after_stop, 95)],
        "completed_after_speech_ms": [pct(after_speech, 50), pct(after_speech, 95)],
        "finals_equal_file_api": [equal, compared],
        "errors": sum(len(log.errors) for log in logs),
        "first_errors": [e for log in logs for e in log.errors][:3],
    }


def run_service(args: argparse.Namespace, clips: list[Any]) -> dict[str, Any]:
    from serve_app.deploy import deploy_config

    counts = [n for n in args.service_streams if n > 0]
    piece = int(args.append_ms * SAMPLE_RATE / 1000)
    rows = []
    with local_ray() as dashboard:
        (port,) = free_ports(1)
        config = service_config(args, port, max(counts))
        deploy_config(config, dashboard_url=dashboard, timeout_s=300)
        base_url = f"http://127.0.0.1:{port}"
        ws_url = base_url.replace("http://", "ws://") + "/v1/realtime"
        for n in counts:
            per_session = [
                [
                    clips[(s * args.service_clips + k) % len(clips)]
                    for k in range(args.service_clips)
                ]
                for s in range(n)
            ]
            logs = [SessionLog(*session_audio(c)) for c in per_session]

            async def all_sessions(logs: list[SessionLog] = logs) -> None:
                await asyncio.gather(*(run_session(ws_url, log, args.chunk, piece) for log in logs))

            asyncio.run(all_sessions())
            row = {"sessions": n, **score(logs, per_session, base_url)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    headers = [
        "sessions",
        "clips",
        "partial WER %",
        "final WER %",
        "first delta p50/p95 ms",
        "completed after speech_stopped p50/p95 ms",
        "completed after speech end p50/p95 ms",
        "finals = file API",
        "errors",
    ]
    table = [
        [
            r["sessions"],
            r["clips"],
            r["partial_wer"],
            r["final_wer"],
            "/".join(map(str, r["first_delta_ms"])),
            "/".join(map(str, r["completed_after_stop_ms"])),
            "/".join(map(str, r["completed_after_speech_ms"])),
            "{}/{}".format(*r["finals_equal_file_api"]),
            r["errors"],
        ]
        for r in rows
    ]
    markdown = "\n".join(
        [
            "## Service: live sessions through Serve (server VAD, 16 kHz PCM16, "
            f"{args.append_ms:g} ms appends)",
            "",
            md_table(headers, table),
        ]
    )
    return {"rows": rows, "markdown": markdown}
