"""Faults on a real Serve deployment: clients that leave, replicas that die.

They run against the session's ``reliable`` app (two Transcriber replicas, one chunk of
a request on the model at a time) so that killing or starving its replicas leaves the
other apps alone. Load is bounded in count and time and goes to 127.0.0.1 only.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fault_tools import (
    TRANSCRIPTIONS,
    Load,
    kill_under_load,
    raw_upload,
    readyz,
    replica_pids,
    transcriber_pids,
    wait_for,
)
from serve_helpers import RELIABLE_APP, TWO_INGRESS_APP, wav_bytes

from bench.attack_http import silent_opus

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def long_silence() -> bytes:
    """50 minutes of silence: 150 chunks, one at a time on the model, so the request
    is still running when its client leaves."""
    return silent_opus(3000)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "sse"])
def test_a_client_that_leaves_stops_its_chunks_within_a_second(serve_cluster, long_silence, stream):
    """Pass: once the request is on the model, closing the connection releases it in
    the Ingress (no chunk of it running or waiting) within 1 s, so no new chunk of it
    starts later than that; the next request is served."""
    url = serve_cluster.reliable_url
    fields = {"stream": "true"} if stream else {}
    sock = raw_upload(url, long_silence, **fields)
    try:
        wait_for(lambda: readyz(url)["on_model"] == 1, 60, "the request reached the model")
        if stream:
            assert b"200" in sock.recv(4096).split(b"\r\n", 1)[0]  # headers of the stream
    finally:
        sock.close()
    left = wait_for(lambda: readyz(url)["in_flight"] == 0, 5, "the request was released")
    assert left < 1.0, f"released {left:.2f} s after the client left"
    print(f"\n{'SSE' if stream else 'plain'} client left: request released in {left:.2f} s")
    assert readyz(url)["on_model"] == 0
    clip = silent_opus(3)
    again = httpx.post(url + TRANSCRIPTIONS, files={"file": ("a.opus", clip)}, timeout=60)
    assert again.status_code == 200


def test_many_cancellations_never_leave_the_batched_transcriber_stuck(serve_cluster):
    """Ray issue #50046: a ``@serve.batch`` deployment stuck for good after many of its
    callers were cancelled. Pass: three rounds of eight clients that leave once all
    their requests are on the model (chunks queued for a batch, in one, or between
    two); each round is released within 5 s, and afterwards eight fresh requests at
    once are all 200."""
    url = serve_cluster.reliable_url
    audio = silent_opus(200)  # 10 chunks, one at a time per request: still running
    for _ in range(3):
        socks = [raw_upload(url, audio) for _ in range(8)]
        try:
            wait_for(lambda: readyz(url)["on_model"] == 8, 60, "all eight on the model")
        finally:
            for sock in socks:
                sock.close()
        wait_for(lambda: readyz(url)["in_flight"] == 0, 5, "the round was released")
    clip = silent_opus(3)

    def post(_: int) -> int:
        r = httpx.post(url + TRANSCRIPTIONS, files={"file": ("a.opus", clip)}, timeout=60)
        return r.status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(post, range(8))) == [200] * 8


def test_killing_a_transcriber_replica_under_load_fails_nothing(serve_cluster, speech):
    """Pass: with two Transcriber replicas and requests in flight, SIGKILL of one gives
    only 200s with the right transcript or 503s with Retry-After (the killed replica's
    chunks are sent once more, to the other), never a 500 or a hang; a request
    succeeds within 30 s of the kill, and Serve brings the replica back."""
    url = serve_cluster.reliable_url
    clip = wav_bytes(speech(30.0, 11))  # two chunks
    expected = httpx.post(url + TRANSCRIPTIONS, files={"file": ("a.wav", clip)}, timeout=120)
    assert expected.status_code == 200
    pids = transcriber_pids(serve_cluster.dashboard_url)
    assert len(pids) == 2, pids

    load, _, recovery_s = kill_under_load(url, clip, pids[0], started_after=6)
    outcomes = [(s, text, ra) for _, s, text, ra in load.outcomes]
    statuses = {s for s, _, _ in outcomes}
    assert statuses <= {200, 503}, [o for o in outcomes if o[0] not in (200, 503)][:3]
    assert all(ra for s, _, ra in outcomes if s == 503)
    assert all(text == expected.json()["text"] for s, text, _ in outcomes if s == 200)
    assert recovery_s < 30
    print(
        f"\nSIGKILL of a Transcriber replica under load: {len(outcomes)} requests, "
        f"statuses {sorted(statuses)}, first 200 after the kill in {recovery_s:.2f} s"
    )
    wait_for(
        lambda: len(transcriber_pids(serve_cluster.dashboard_url)) == 2,
        120,
        "Serve replaced the killed replica",
    )


def test_killing_one_of_two_ingress_replicas_leaves_the_other_serving(serve_cluster, speech):
    """Pass: SIGKILL of one Ingress replica under load fails at most the requests that
    were in flight on it (6 clients: at most 6), every request sent after the kill
    has been noticed succeeds, and one does within 30 s. Its own clients' outcomes are
    printed: Ray's proxy answers for a replica that died mid-request."""
    url = serve_cluster.two_ingress_url
    clip = wav_bytes(speech(10.0, 12))
    expected = httpx.post(url + TRANSCRIPTIONS, files={"file": ("a.wav", clip)}, timeout=120)
    assert expected.status_code == 200
    pids = replica_pids(serve_cluster.dashboard_url, TWO_INGRESS_APP, "Ingress")
    assert len(pids) == 2, pids
    load, killed_at, recovery_s = kill_under_load(url, clip, pids[0], started_after=12)
    failed = [(t, s, text) for t, s, text, _ in load.outcomes if s != 200]
    assert len(failed) <= 6, failed
    assert all(t < killed_at + 5 for t, _, _ in failed), "a failure long after the kill"
    right = expected.json()["text"]
    assert all(text == right for _, s, text, _ in load.outcomes if s == 200)
    print(
        f"\nSIGKILL of one of two Ingress replicas: {len(load.outcomes)} requests, "
        f"{len(failed)} failed ({sorted({s for _, s, _ in failed})}: "
        f"{sorted({text[:80] for _, _, text in failed})}), first 200 after the kill in "
        f"{recovery_s:.2f} s"
    )


def _reliable_batch_size() -> int:
    from ray import serve

    handle = serve.get_deployment_handle("Transcriber", app_name=RELIABLE_APP)
    return handle.stats.remote().result(timeout_s=30)["max_batch_size"]


def test_a_user_config_change_under_load_fails_nothing_and_restarts_nothing(serve_cluster, speech):
    """Pass: ``serve deploy`` of a new batching ``user_config`` while requests flow: every
    request 200 with the right text, and the Transcriber replicas are the same
    processes afterwards (the change went through ``reconfigure``)."""
    url = serve_cluster.reliable_url
    clip = wav_bytes(speech(10.0, 13))
    expected = httpx.post(url + TRANSCRIPTIONS, files={"file": ("a.wav", clip)}, timeout=120)
    pids = sorted(transcriber_pids(serve_cluster.dashboard_url))
    try:
        with Load(url, clip) as load:
            wait_for(lambda: len(load.outcomes) >= 6, 60, "load started")
            serve_cluster.apply(
                reliable_batching={"max_batch_size": 4, "batch_wait_timeout_s": 0.02}
            )
            wait_for(lambda: _reliable_batch_size() == 4, 60, "the new batch size applied")
            time.sleep(2.0)
    finally:
        serve_cluster.apply()
    statuses = sorted({s for _, s, _, _ in load.outcomes})
    assert statuses == [200], [o for o in load.outcomes if o[1] != 200][:3]
    assert all(text == expected.json()["text"] for _, _, text, _ in load.outcomes)
    assert sorted(transcriber_pids(serve_cluster.dashboard_url)) == pids


def test_an_args_change_rolls_out_new_replicas_under_load_without_5xx(serve_cluster, speech):
    """Pass: ``serve deploy`` with changed ``args`` replaces every replica of the
    two-Ingress app (new processes) while requests flow, and no request gets a 5xx, a
    dropped connection or a hang: old Ingress replicas drain (their graceful shutdown
    outlasts the longest request) while new ones take the traffic."""
    url = serve_cluster.two_ingress_url
    clip = wav_bytes(speech(10.0, 14))
    expected = httpx.post(url + TRANSCRIPTIONS, files={"file": ("a.wav", clip)}, timeout=120)

    def ingress_pids() -> set[int]:
        return set(replica_pids(serve_cluster.dashboard_url, TWO_INGRESS_APP, "Ingress"))

    # An earlier test may have killed an Ingress replica; Serve replaces it, so wait
    # for both before taking the "before" set rather than racing the restart.
    wait_for(lambda: len(ingress_pids()) == 2, 60, "both Ingress replicas running")
    before = ingress_pids()

    def rolled_out() -> bool:
        now = ingress_pids()
        return len(now) == 2 and not now & before

    try:
        with Load(url, clip) as load:
            wait_for(lambda: len(load.outcomes) >= 6, 60, "load started")
            started = time.monotonic()
            serve_cluster.apply(two_ingress_args={"retry_after_s": 3})  # waits for RUNNING
            wait_for(rolled_out, 180, "new Ingress replicas replaced the old")
            took = time.monotonic() - started
            time.sleep(3.0)
    finally:
        serve_cluster.apply()
    bad = [o for o in load.outcomes if o[1] != 200]
    assert not bad, bad[:3]
    assert all(text == expected.json()["text"] for _, _, text, _ in load.outcomes)
    print(
        f"\nargs redeploy under load: {len(load.outcomes)} requests, all 200; "
        f"rolled out in {took:.1f} s"
    )
