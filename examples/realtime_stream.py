#!/usr/bin/env python3
"""Stream an audio file to the realtime endpoint at real time with the openai SDK.

The file plays the part of a microphone: it is decoded (any format PyAV reads),
resampled to 24 kHz PCM16 (the Realtime API's standard rate) and appended in 100 ms
pieces, each when its time comes. The server's VAD ends turns at pauses; the words of
each turn are printed as they settle (``delta`` events) and then the turn's final
transcript (``completed``), which comes from the same pipeline as
``/v1/audio/transcriptions`` and may revise the partial text.

    make run                                        # in another shell
    python examples/realtime_stream.py recording.wav
    python examples/realtime_stream.py talk.mp3 --no-vad --verbatimicity 0

``--no-vad`` sets ``turn_detection: null``: the whole file is one turn that the client
commits at the end. ``--fast`` sends without pacing (as fast as the socket takes it);
with the server's VAD on, the server refuses audio more than 20 s ahead of its decoder
(an ``input_audio_buffer_full`` error each time), so use ``--fast --no-vad`` for longer
files.
With the API key on, pass ``--api-key`` or set ``OPENAI_API_KEY``.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
from openai import OpenAI

RATE = 24_000
PIECE_S = 0.1
FINAL_COMMIT = "final_commit"  # the event id of the commit after the last append


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", type=Path, help="an audio file (wav, flac, mp3, ogg, m4a)")
    parser.add_argument("--base-url", default="http://127.0.0.1:8765/v1")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"))
    parser.add_argument("--verbatimicity", type=float, default=1.0)
    parser.add_argument("--no-vad", action="store_true", help="one turn, committed at the end")
    parser.add_argument("--silence-ms", type=int, default=500, help="server VAD's pause")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="do not pace the appends (with VAD on, at most 20 s ahead of the server)",
    )
    return parser.parse_args(argv)


def pcm16_at_24k(path: Path) -> np.ndarray:
    """The file's first audio stream as mono 24 kHz int16 samples."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    pieces = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(pieces).astype("<i2") if pieces else np.zeros(0, "<i2")


def session_settings(args: argparse.Namespace) -> dict:
    turn_detection = (
        None if args.no_vad else {"type": "server_vad", "silence_duration_ms": args.silence_ms}
    )
    return {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": RATE},
                "transcription": {"verbatimicity": args.verbatimicity},
                "turn_detection": turn_detection,
            }
        },
    }


def send_audio(conn, pcm: np.ndarray, paced: bool, done: threading.Event) -> None:
    """Appends at real time, then a commit for whatever the VAD has not ended."""
    step = int(RATE * PIECE_S)
    start = time.monotonic()
    for i, at in enumerate(range(0, pcm.size, step)):
        if paced:
            time.sleep(max(0.0, start + i * PIECE_S - time.monotonic()))
        piece = pcm[at : at + step].tobytes()
        conn.input_audio_buffer.append(audio=base64.b64encode(piece).decode())
    done.set()  # before the commit: its answer may come back before this line returns
    conn.input_audio_buffer.commit(event_id=FINAL_COMMIT)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pcm = pcm16_at_24k(args.audio)
    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)
    sent = threading.Event()
    open_items: set[str] = set()
    last_commit_answered = False
    with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        conn.session.update(session=session_settings(args))
        sender = threading.Thread(
            target=send_audio, args=(conn, pcm, not args.fast, sent), daemon=True
        )
        sender.start()
        for event in conn:
            kind = event.type
            if kind == "input_audio_buffer.committed":
                open_items.add(event.item_id)
                # The server answers the final commit right after the last append, so a
                # commit seen once all was sent is taken as that answer (a VAD commit
                # racing it is still waited for through open_items).
                last_commit_answered = sent.is_set()
            elif kind.endswith("input_audio_transcription.delta"):
                print(event.delta, end="", flush=True)
            elif kind.endswith("input_audio_transcription.completed"):
                open_items.discard(event.item_id)
                print(f"\n[final] {event.transcript}", flush=True)
            elif kind.endswith("input_audio_transcription.failed"):
                open_items.discard(event.item_id)
                print(f"\n[failed] {event.error.message}", file=sys.stderr)
            elif kind == "error":
                if getattr(event.error, "event_id", None) == FINAL_COMMIT:
                    last_commit_answered = True  # nothing was left to commit
                else:
                    print(f"\n[error] {event.error.message}", file=sys.stderr)
                    if event.error.code == "session_expired":
                        return 1
            if sent.is_set() and last_commit_answered and not open_items:
                return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
