"""Chunks from different requests share batches, and sharing changes nobody's result.

Batching is proven from the Transcriber's own counters (rows vs batches, and the
row count of each batch), never from timing. Counters are cumulative per replica, so
each test diffs a snapshot taken before and after.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from serve_helpers import BASE_BATCHING, MAIN_APP, assert_openai_error, assert_same_words

from serve_app.engine.chunking import plan_chunks

pytestmark = pytest.mark.serve

TRANSCRIPTIONS = "/v1/audio/transcriptions"
# (seconds, seed, Reverb options): lengths, modes and verbatimicities all differ.
MIXED = [
    (2.0, 11, {"decoding_mode": "ctc_greedy_search"}),
    (4.0, 12, {"decoding_mode": "ctc_prefix_beam_search", "verbatimicity": "0"}),
    (6.0, 13, {}),  # attention_rescoring, the default
    (23.0, 14, {"decoding_mode": "ctc_prefix_beam_search", "verbatimicity": "0.5"}),
    (3.0, 15, {"verbatimicity": "0.3", "beam_size": "4"}),
    (1.5, 16, {"decoding_mode": "joint_decoding"}),
    (2.0, 17, {"decoding_mode": "attention"}),
    (5.0, 18, {"decoding_mode": "ctc_greedy_search", "blank_penalty": "1.5"}),
    (8.0, 19, {"word_timestamps": "rev", "verbatimicity": "0.8"}),
]


def _chunks(seconds: float) -> int:
    return len(plan_chunks(round(seconds * 16000)))


def _window(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What happened between two stats snapshots of the same replica."""
    assert after["pid"] == before["pid"], "the replica restarted during the test"
    sizes = {
        int(size): count - before["rows_per_batch"].get(size, 0)
        for size, count in after["rows_per_batch"].items()
    }
    sizes = {size: n for size, n in sizes.items() if n}
    return {
        "rows": after["rows"] - before["rows"],
        "batches": after["batches"] - before["batches"],
        "failed_rows": after["failed_rows"] - before["failed_rows"],
        "max_rows": max(sizes, default=0),
        "sizes": sizes,
    }


async def _post_all(base_url: str, requests: list[tuple[bytes, dict]]) -> list[Any]:
    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=180) as client:
        return await asyncio.gather(
            *(
                client.post(
                    TRANSCRIPTIONS,
                    files={"file": ("clip.wav", audio, "audio/wav")},
                    data={
                        **fields,
                        "response_format": "verbose_json",
                        "timestamp_granularities[]": ["word", "segment"],
                    },
                )
                for audio, fields in requests
            )
        )


def test_concurrent_mixed_requests_share_batches_and_match_solo(
    serve_cluster, http, make_wav, main_stats
):
    requests = [(make_wav(seconds, seed), options) for seconds, seed, options in MIXED]
    solo = []
    for audio, options in requests:
        response = http.post(
            TRANSCRIPTIONS,
            files={"file": ("clip.wav", audio, "audio/wav")},
            data={
                **options,
                "response_format": "verbose_json",
                "timestamp_granularities[]": ["word", "segment"],
            },
        )
        assert response.status_code == 200, response.text
        solo.append(response.json())
    assert sum(bool(s["words"]) for s in solo) >= len(solo) // 2, "too few words to compare"

    before = main_stats()
    together = asyncio.run(_post_all(serve_cluster.base_url, requests))
    window = _window(before, main_stats())

    for alone, response in zip(solo, together, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["text"] == alone["text"]
        assert body["duration"] == alone["duration"]
        assert_same_words(body["words"], alone["words"])
        assert [s["text"] for s in body["segments"]] == [s["text"] for s in alone["segments"]]

    expected_rows = sum(_chunks(seconds) for seconds, _, _ in MIXED)
    assert window["rows"] == expected_rows
    assert window["failed_rows"] == 0
    assert window["batches"] < window["rows"], window
    assert window["max_rows"] > 1, window


def test_corrupt_upload_fails_alone(serve_cluster, make_wav):
    good = [(make_wav(3.0, 30 + i), {"decoding_mode": "ctc_prefix_beam_search"}) for i in range(3)]
    corrupt = (b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\xff" * 3000, {})
    truncated_header = (good[0][0][:30], {})
    responses = asyncio.run(
        _post_all(serve_cluster.base_url, [good[0], corrupt, good[1], truncated_header, good[2]])
    )
    assert_openai_error(responses[1], 415, param="file")
    assert_openai_error(responses[3], 415, param="file")
    for index in (0, 2, 4):
        assert responses[index].status_code == 200, responses[index].text


def test_a_failing_row_does_not_fail_its_batch(serve_cluster, speech, main_stats):
    """Straight at the Transcriber: one broken chunk among good ones gets its own error
    value back while the rest of the batch decodes."""
    from ray import serve

    from serve_app.engine.options import DecodeOptions
    from serve_app.wire import ChunkDecodeError, ChunkJob, ChunkResult

    handle = serve.get_deployment_handle("Transcriber", app_name=MAIN_APP)
    options = DecodeOptions(decoding_mode="ctc_greedy_search")
    jobs = [ChunkJob(speech(2.0, 40 + i), 0, options) for i in range(8)]
    jobs.insert(3, ChunkJob(None, 0, options))  # type: ignore[arg-type]

    before = main_stats()
    outcomes = [r.result(timeout_s=60) for r in [handle.decode.remote(j) for j in jobs]]
    window = _window(before, main_stats())

    assert isinstance(outcomes[3], ChunkDecodeError)
    assert outcomes[3].status_code == 500
    assert all(isinstance(o, ChunkResult) for i, o in enumerate(outcomes) if i != 3)
    assert window["failed_rows"] == 1
    assert window["max_rows"] > 1, window


def _wait_for_batch_size(main_stats, size: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        stats = main_stats()
        if stats["max_batch_size"] == size:
            return stats
        assert time.monotonic() < deadline, f"max_batch_size stayed {stats['max_batch_size']}"
        time.sleep(0.2)


def test_reconfigure_changes_batch_size_without_restart(serve_cluster, speech, main_stats):
    from ray import serve

    from serve_app.engine.options import DecodeOptions
    from serve_app.wire import ChunkJob

    before = main_stats()
    assert before["max_batch_size"] == BASE_BATCHING["max_batch_size"]
    try:
        serve_cluster.apply({"max_batch_size": 3, "batch_wait_timeout_s": 0.2})
        after = _wait_for_batch_size(main_stats, 3)
        assert (after["pid"], after["actor_id"], after["replica_id"]) == (
            before["pid"],
            before["actor_id"],
            before["replica_id"],
        )
        assert after["reconfigures"] == before["reconfigures"] + 1
        assert after["batch_wait_timeout_s"] == 0.2

        handle = serve.get_deployment_handle("Transcriber", app_name=MAIN_APP)
        options = DecodeOptions(decoding_mode="ctc_greedy_search")
        responses = [handle.decode.remote(ChunkJob(speech(1.0, i), 0, options)) for i in range(9)]
        for response in responses:
            response.result(timeout_s=60)
        window = _window(after, main_stats())
        assert window["rows"] == 9
        assert window["max_rows"] <= 3, window
        assert window["batches"] >= 3, window
    finally:
        serve_cluster.apply(BASE_BATCHING)
        restored = _wait_for_batch_size(main_stats, BASE_BATCHING["max_batch_size"])
    assert restored["pid"] == before["pid"]
