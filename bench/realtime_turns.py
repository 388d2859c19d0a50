"""Where the live finals' WER comes from, without Ray: turns cut by the endpointer
against the whole clips.

The service benchmark's sessions (``--service-clips`` held-out clips, each followed by
1.2 s of digital silence) run here through a :class:`LiveSession` and the batched step
loop, all at once rather than paced; each turn the server VAD commits gets its final
from an engine :class:`Transcriber` on exactly the turn's audio, as the service's
finals come from the file API. For each ``--prefix-padding-ms`` (how much audio before
the first speech frame a turn keeps) it reports the finals' WER, the same
Transcriber's WER on the whole clips, and the clips whose final differs from the whole
clip's transcript (``--show``). A model whose finals score worse than its whole clips
is sensitive to where turns are cut; one that scores the same is not.

    .venv/bin/python -m bench.realtime_turns --model models/demo-live --data tests/data/demo
    .venv/bin/python -m bench.realtime_turns --model models/demo-live --data tests/data/demo \
        --prefix-padding-ms 200 300 500 --kind heldout
"""

from __future__ import annotations

import argparse
import asyncio
import base64
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

from bench._common import emit, md_table
from bench.realtime import Clip, load_clips
from bench.realtime_service import PAUSE_S, clip_of_each_turn, session_audio, speech_spans

APPEND = 1600  # 100 ms at 16 kHz


def session_finals(model: Any, transcriber: Any, clips: list[Clip], args, padding_ms: int):
    """The finals of one session over ``clips``, grouped by the clip each turn covers."""
    from serve_app.live.decoder import LiveStepper
    from serve_app.live.session import LiveSession

    async def finals(audio: np.ndarray, options: Any) -> str:
        return transcriber.transcribe(audio, options).text

    async def run() -> list[list[str]]:
        pcm, offsets = session_audio(clips)
        stepper = LiveStepper(model, args.chunk)
        session = LiveSession.on_model(model, finals, beam_size=4)
        vad = {
            "type": "server_vad",
            "silence_duration_ms": args.silence_ms,
            "prefix_padding_ms": padding_ms,
        }
        audio_in = {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": vad}
        update = {"type": "transcription", "audio": {"input": audio_in}}
        session.handle({"type": "session.update", "session": update})
        for at in range(0, pcm.size, APPEND):
            piece = base64.b64encode(pcm[at : at + APPEND].tobytes()).decode()
            session.handle({"type": "input_audio_buffer.append", "audio": piece})
            while stepper.ready([session.stream]):
                (out,) = stepper.step([session.stream])
                session.on_step(out)
        await session.drain()
        turns: dict[str, dict[str, Any]] = {}
        while not session.outbox.empty():
            event = session.outbox.get_nowait()
            turn = turns.setdefault(event.get("item_id", ""), {})
            if event["type"] == "input_audio_buffer.speech_started":
                turn["start"] = event["audio_start_ms"] / 1000
            elif event["type"] == "input_audio_buffer.speech_stopped":
                turn["end"] = event["audio_end_ms"] / 1000
            elif event["type"].endswith("transcription.completed"):
                turn["text"] = event["transcript"]
        ended = [t for t in turns.values() if "start" in t and "end" in t]
        spans = speech_spans(clips, offsets)
        owned: list[list[str]] = [[] for _ in clips]
        turn_spans = [(t["start"], t["end"]) for t in ended]
        for turn, clip in zip(ended, clip_of_each_turn(spans, turn_spans), strict=True):
            owned[clip].append(turn.get("text", ""))
        return owned

    return asyncio.run(run())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a causal Reverb model folder")
    parser.add_argument("--data", type=Path, required=True, help="demo test-data folder")
    parser.add_argument("--kind", default="continuous", help="which clips of --data")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--service-clips", type=int, default=6, help="clips per session")
    parser.add_argument("--chunk", type=int, default=8, choices=(8, 16))
    parser.add_argument("--silence-ms", type=int, default=500)
    parser.add_argument("--prefix-padding-ms", type=int, nargs="+", default=[300])
    parser.add_argument("--show", action="store_true", help="print the clips that differ")
    parser.add_argument("--md", type=Path)
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import torch

    from serve_app.engine.model import load_model
    from serve_app.engine.transcriber import Transcriber

    args = parse_args(argv)
    torch.set_num_threads(1)
    model = load_model(args.model, device="cpu")
    transcriber = Transcriber(model)
    clips = load_clips(args.data, args.kind, args.clips)
    refs = [c.text for c in clips]
    wholes = [transcriber.transcribe(c.audio).text for c in clips]
    whole_wer = 100 * jiwer.wer(refs, wholes)
    rows, result = [], []
    n = args.service_clips
    for padding in args.prefix_padding_ms:
        finals: list[str] = []
        for at in range(0, len(clips), n):
            turns = session_finals(model, transcriber, clips[at : at + n], args, padding)
            finals += [" ".join(t) for t in turns]
        differ = [i for i, (f, w) in enumerate(zip(finals, wholes, strict=True)) if f != w]
        wer = 100 * jiwer.wer(refs, [f if f.strip() else "<empty>" for f in finals])
        rows.append([padding, f"{wer:.2f}", f"{whole_wer:.2f}", f"{len(differ)}/{len(clips)}"])
        result.append({"prefix_padding_ms": padding, "final_wer": wer, "whole_wer": whole_wer})
        if args.show:
            for i in differ:
                print(f"{args.kind} clip {i}: prefix padding {padding} ms")
                print(f"  ref  : {refs[i]}\n  whole: {wholes[i]}\n  final: {finals[i]}")
    report = "\n".join(
        [
            "# Live turns against whole clips (no Ray)",
            "",
            f"Model {args.model}, {len(clips)} {args.kind} clips, {n} per session with "
            f"{PAUSE_S:g} s pauses, server VAD (silence {args.silence_ms} ms), chunk "
            f"{args.chunk}; finals and whole clips by the same Transcriber (attention "
            "rescoring).",
            "",
            md_table(
                ["prefix padding ms", "finals WER %", "whole clips WER %", "clips differing"],
                rows,
            ),
        ]
    )
    emit(report, args.md, args.json, result)


if __name__ == "__main__":
    main()
