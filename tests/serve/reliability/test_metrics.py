"""The metrics an operator scrapes: Ray's metrics export port on the running test
apps, after traffic that exercises each (plain and SSE transcriptions, a 415, a
Transcriber replica killed under load, whose chunks are retried, and a live session
with a refusal beside it). Every metric the project defines must be there with its
HELP text, and the ones with a meaning to check must say the right thing (the 415
counted under its code, the retries counted, the live turn and the refusal counted).
The one a test through Serve cannot provoke, a live step that raises, is checked on
the sessions' observer (tests/test_realtime_sessions.py)."""

from __future__ import annotations

import base64
import json
import re
import time

import httpx
import pytest
from fault_tools import TRANSCRIPTIONS, kill_under_load, transcriber_pids, wait_for
from serve_helpers import API_KEY, REALTIME_APP, REALTIME_PREFIX, RELIABLE_APP, wav_bytes

from serve_app.serve.metrics import EXPORTED_METRICS

pytestmark = pytest.mark.serve
FAULT_ONLY = {"ray_reverb_realtime_step_failures_total"}


def scrape() -> str:
    """Every metrics export port of this Ray instance, as Prometheus would scrape them."""
    import ray

    pages = []
    for node in ray.nodes():
        if node["Alive"]:
            url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            pages.append(httpx.get(url, timeout=30).text)
    return "\n".join(pages)


def _sample(page: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for match in re.finditer(rf"^{name}\{{([^}}]*)\}} ([0-9.e+-]+)$", page, re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def _fail_one_row() -> None:
    """A chunk with no samples, straight at a Transcriber: a failed row, returned as
    its error (what a row that breaks in a batch does)."""
    from ray import serve

    from serve_app.engine.options import DecodeOptions
    from serve_app.wire import ChunkJob, ReverbServeError

    handle = serve.get_deployment_handle("Transcriber", app_name=RELIABLE_APP)
    job = ChunkJob(None, 0, DecodeOptions(decoding_mode="ctc_greedy_search"))  # type: ignore[arg-type]
    assert isinstance(handle.decode.remote(job).result(timeout_s=60), ReverbServeError)


def _live_turn_and_a_refusal(base_url: str, audio) -> None:
    """One live session that commits a turn and gets its final, and one socket without
    the key, refused."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = base_url.replace("http://", "ws://") + REALTIME_PREFIX + "?intent=transcription"
    with pytest.raises(InvalidStatus):
        connect(url, open_timeout=30)
    pcm = base64.b64encode((audio.clip(-1, 1) * 32767).astype("<i2").tobytes()).decode()
    key = f"openai-insecure-api-key.{API_KEY}"
    with connect(url, subprotocols=["realtime", key], open_timeout=30) as ws:
        pcm16k = {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}
        update = {"type": "transcription", "audio": {"input": pcm16k}}
        ws.send(json.dumps({"type": "session.update", "session": update}))
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": pcm}))
        time.sleep(1.0)  # the step loop decodes the appended chunks before the commit
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        while not json.loads(ws.recv(timeout=120))["type"].endswith("transcription.completed"):
            pass


def test_every_operator_metric_is_exported_with_its_help(serve_cluster, speech):
    url = serve_cluster.reliable_url
    clip = wav_bytes(speech(30.0, 11))  # two chunks
    files = {"file": ("a.wav", clip)}
    assert httpx.post(url + TRANSCRIPTIONS, files=files, timeout=120).status_code == 200
    streamed = httpx.post(url + TRANSCRIPTIONS, files=files, data={"stream": "true"}, timeout=120)
    assert "transcript.text.delta" in streamed.text
    junk = httpx.post(url + TRANSCRIPTIONS, files={"file": ("a.wav", b"junk" * 100)}, timeout=60)
    assert junk.status_code == 415
    pids = transcriber_pids(serve_cluster.dashboard_url)
    kill_under_load(url, clip, pids[0], started_after=4)
    wait_for(
        lambda: len(transcriber_pids(serve_cluster.dashboard_url)) == 2,
        120,
        "Serve replaced the killed replica",
    )
    _fail_one_row()  # after the kill: a killed replica's counters die with it
    _live_turn_and_a_refusal(serve_cluster.base_url, speech(3.0, 12))

    deadline = time.monotonic() + 90  # Ray exports every few seconds
    while True:
        page = scrape()
        missing = [
            name
            for name, kind in EXPORTED_METRICS.items()
            if name not in FAULT_ONLY
            and (
                not re.search(rf"^# HELP {name} \S", page, re.MULTILINE)
                or f"# TYPE {name} {kind}" not in page
            )
        ]
        retries = _sample(page, "ray_reverb_chunk_retries_total", application=RELIABLE_APP)
        rejected = _sample(
            page, "ray_reverb_rejections_total", status="415", code="unsupported_audio"
        )
        live_turns = _sample(
            page, "ray_reverb_realtime_turns_total", application=REALTIME_APP, outcome="completed"
        )
        unauthorized = _sample(page, "ray_reverb_realtime_refusals_total", code="unauthorized")
        if not missing and retries > 0 and rejected > 0 and live_turns > 0 and unauthorized > 0:
            break
        assert time.monotonic() < deadline, (missing, retries, rejected, live_turns, unauthorized)
        time.sleep(2)
    assert _sample(page, "ray_reverb_audio_received_seconds_total", application=RELIABLE_APP) > 0
    assert _sample(page, "ray_reverb_sse_first_delta_seconds_count", application=RELIABLE_APP) > 0
