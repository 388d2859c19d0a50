"""The client half of docker/smoke.sh: the official ``openai`` SDK against the container.

``python docker/smoke_client.py PORT CLIP transcribe`` checks a verbose_json
transcription's text against tests/data/demo/manifest.json; ``... stream`` checks the
SSE stream's final text and that an upload that is not audio gets 415. Exits non-zero,
with the reason, on any difference: the shell script only reports the step.
"""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import openai
from openai import OpenAI

DATA = Path("tests/data/demo")


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def transcribe(client: OpenAI, clip: Path, expected: str) -> None:
    with clip.open("rb") as f:
        r = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["word"],
        )
    print(f"  {clip.name}: {r.text!r} ({len(r.words or [])} words timed, {r.duration:.2f} s)")
    print(f"  manifest: {expected!r}")
    if words(r.text) != words(expected):
        sys.exit("transcript differs from the manifest")


def stream_and_refuse(client: OpenAI, clip: Path, expected: str) -> None:
    with clip.open("rb") as f:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=f, stream=True))
    kinds = [e.type for e in events]
    deltas = kinds.count("transcript.text.delta")
    print(f"  stream=true: {len(kinds)} events, {deltas} deltas, last {kinds[-1]}")
    if kinds[-1] != "transcript.text.done" or words(events[-1].text) != words(expected):
        sys.exit(f"streamed transcript differs: {events[-1]!r}")
    try:
        not_audio = ("notes.wav", io.BytesIO(b"not audio" * 100))
        client.audio.transcriptions.create(model="whisper-1", file=not_audio)
    except openai.APIStatusError as exc:
        code = exc.body.get("code") if isinstance(exc.body, dict) else exc.body
        print(f"  not audio: {exc.status_code} {code}")
        if exc.status_code != 415:
            sys.exit("expected 415")
    else:
        sys.exit("an upload that is not audio was accepted")


def main(port: str, clip_name: str, check: str) -> None:
    manifest = json.loads((DATA / "manifest.json").read_text())
    (expected,) = [c["text"] for c in manifest["clips"] if c["file"] == clip_name]
    client = OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300
    )
    checks = {"transcribe": transcribe, "stream": stream_and_refuse}
    checks[check](client, DATA / clip_name, expected)


if __name__ == "__main__":
    main(*sys.argv[1:])
