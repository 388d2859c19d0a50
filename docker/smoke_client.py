"""The client half of docker/smoke.sh: the official ``openai`` SDK against the container.

``python docker/smoke_client.py PORT CLIP transcribe`` checks a verbose_json
transcription's text against tests/data/demo/manifest.json; ``... stream`` checks the
SSE stream's final text and that an upload that is not audio gets 415; ``... live``
streams the clip over the realtime WebSocket with the SDK's realtime client (paced at
real time, server VAD on, as ``examples/realtime_stream.py`` does) and checks that
deltas came and that the turns' finals join into the manifest's text. Exits non-zero,
with the reason, on any difference: the shell script only reports the step.
"""

from __future__ import annotations

import io
import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
from openai import OpenAI

DATA = Path("tests/data/demo")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from realtime_stream import FINAL_COMMIT, RATE, pcm16_at_24k, send_audio  # noqa: E402


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


def wait_until_live_ready(client: OpenAI, wait_s: float = 60) -> dict[str, Any]:
    """The live endpoint's own probe: /readyz is the file API's, and the Realtime
    replica loads its own copy of the model, so it may come up later."""
    url = str(client.base_url).replace("/v1/", "/v1/realtime/readyz")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            answer = httpx.get(url, timeout=10)
            if answer.status_code == 200:
                return answer.json()
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"{url} not 200 after {wait_s:g} s")
        time.sleep(1)


def live(client: OpenAI, clip: Path, expected: str) -> None:
    """One realtime session: the clip and a second of silence at real time, then a
    commit for anything the server's VAD has not ended; every item must complete."""
    pcm = np.concatenate([pcm16_at_24k(clip), np.zeros(RATE, "<i2")])
    sent = threading.Event()
    deltas, finals, problems, open_items = [], [], [], set()
    print(f"  /v1/realtime/readyz: {wait_until_live_ready(client)}")
    with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        conn.session.update(
            session={
                "type": "transcription",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE}}},
            }
        )
        # The example's sender: 100 ms appends at real time, then the commit.
        threading.Thread(target=send_audio, args=(conn, pcm, True, sent), daemon=True).start()
        answered, deadline = False, time.monotonic() + 120
        while not (answered and not open_items):
            if time.monotonic() > deadline:
                sys.exit(f"live session unfinished after 120 s: {finals!r}")
            event = conn.recv()
            if event.type == "input_audio_buffer.committed":
                open_items.add(event.item_id)
                answered = sent.is_set()
            elif event.type.endswith("input_audio_transcription.delta"):
                deltas.append(event.delta)
            elif event.type.endswith("input_audio_transcription.completed"):
                open_items.discard(event.item_id)
                finals.append(event.transcript)
            elif event.type.endswith("input_audio_transcription.failed"):
                open_items.discard(event.item_id)
                problems.append(event.error.message)
            elif event.type == "error":
                if getattr(event.error, "event_id", None) == FINAL_COMMIT:
                    answered = True  # the VAD had ended every turn: nothing left to commit
                else:
                    problems.append(event.error.message)
    print(f"  live: {len(deltas)} deltas {''.join(deltas)!r}; finals {finals!r}")
    if problems or not deltas or words(" ".join(finals)) != words(expected):
        sys.exit(f"live session differs from the manifest: {problems or finals!r}")


def main(port: str, clip_name: str, check: str) -> None:
    manifest = json.loads((DATA / "manifest.json").read_text())
    (expected,) = [c["text"] for c in manifest["clips"] if c["file"] == clip_name]
    client = OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300
    )
    checks = {"transcribe": transcribe, "stream": stream_and_refuse, "live": live}
    checks[check](client, DATA / clip_name, expected)


if __name__ == "__main__":
    main(*sys.argv[1:])
