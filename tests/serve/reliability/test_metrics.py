"""The metrics an operator scrapes: Ray's metrics export port on the running test
apps, after traffic that exercises each (plain and SSE transcriptions, a 415, and a
Transcriber replica killed under load, whose chunks are retried). Every metric the
project defines must be there with its HELP text, and the ones with a meaning to check
must say the right thing (the 415 counted under its code, the retries counted)."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from fault_tools import TRANSCRIPTIONS, kill_under_load, transcriber_pids, wait_for
from serve_helpers import RELIABLE_APP, wav_bytes

from serve_app.serve.metrics import EXPORTED_METRICS

pytestmark = pytest.mark.serve


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

    deadline = time.monotonic() + 90  # Ray exports every few seconds
    while True:
        page = scrape()
        missing = [
            name
            for name, kind in EXPORTED_METRICS.items()
            if not re.search(rf"^# HELP {name} \S", page, re.MULTILINE)
            or f"# TYPE {name} {kind}" not in page
        ]
        retries = _sample(page, "ray_reverb_chunk_retries_total", application=RELIABLE_APP)
        rejected = _sample(
            page, "ray_reverb_rejections_total", status="415", code="unsupported_audio"
        )
        if not missing and retries > 0 and rejected > 0:
            break
        assert time.monotonic() < deadline, (missing, retries, rejected)
        time.sleep(2)
    assert _sample(page, "ray_reverb_audio_received_seconds_total", application=RELIABLE_APP) > 0
    assert _sample(page, "ray_reverb_sse_first_delta_seconds_count", application=RELIABLE_APP) > 0
