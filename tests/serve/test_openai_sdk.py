"""The official OpenAI Python SDK, pointed at the service, gets what it expects.

Every response format goes through ``client.audio.transcriptions.create`` exactly as
an application would call OpenAI, with ``model="whisper-1"`` (an alias), so the
SDK's own parsing (``Transcription``, ``TranscriptionVerbose``, ``str``, the SSE
stream) is the judge of compatibility.
"""

from __future__ import annotations

import re

import pytest
from serve_helpers import verbose_transcript

pytestmark = pytest.mark.serve

CLIP_SECONDS = 6.0


@pytest.fixture(scope="module")
def sdk(serve_cluster):
    from openai import OpenAI

    return OpenAI(base_url=serve_cluster.base_url + "/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def clip(make_wav) -> bytes:
    return make_wav(CLIP_SECONDS, 3)


@pytest.fixture(scope="module")
def reference(serve_cluster, clip) -> dict:
    """The transcript with words and segments, fetched once over plain HTTP."""
    return verbose_transcript(serve_cluster.base_url, clip)


def _create(sdk, clip, **kwargs):
    return sdk.audio.transcriptions.create(
        model="whisper-1", file=("clip.wav", clip, "audio/wav"), **kwargs
    )


def test_json(sdk, clip, reference):
    result = _create(sdk, clip)
    assert result.text == reference["text"]


def test_text(sdk, clip, reference):
    assert _create(sdk, clip, response_format="text") == reference["text"] + "\n"


def test_srt(sdk, clip, reference):
    body = _create(sdk, clip, response_format="srt")
    cues = body.strip().split("\n\n")
    assert len(cues) == len(reference["segments"])
    timing = re.compile(r"^\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}$")
    for index, (cue, segment) in enumerate(zip(cues, reference["segments"], strict=True), 1):
        number, times, text = cue.split("\n", 2)
        assert number == str(index)
        assert timing.match(times)
        assert text == segment["text"]


def test_vtt(sdk, clip, reference):
    body = _create(sdk, clip, response_format="vtt")
    assert body.startswith("WEBVTT\n")
    assert body.count(" --> ") == len(reference["segments"])


def test_verbose_json_with_words_and_segments(sdk, clip, reference):
    result = _create(
        sdk, clip, response_format="verbose_json", timestamp_granularities=["word", "segment"]
    )
    assert result.text == reference["text"]
    assert result.language == "english"
    assert result.duration == pytest.approx(CLIP_SECONDS, abs=0.01)
    assert [w.word for w in result.words] == [w["word"] for w in reference["words"]]
    assert all(0 <= w.start <= w.end <= CLIP_SECONDS + 0.5 for w in result.words)
    assert [s.text for s in result.segments] == [s["text"] for s in reference["segments"]]
    assert " ".join(s.text for s in result.segments) == result.text


def test_verbose_json_words_only(sdk, clip, reference):
    result = _create(sdk, clip, response_format="verbose_json", timestamp_granularities=["word"])
    assert result.words and not result.segments


def test_ctm_extension(sdk, clip, reference):
    """ctm is a Reverb extension the SDK does not type; the raw response carries it."""
    raw = sdk.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("clip.wav", clip, "audio/wav"), response_format="ctm"
    )
    lines = raw.http_response.text.split("\n")
    assert [line.split()[4] for line in lines] == [w["word"] for w in reference["words"]]
    assert all(line.startswith("clip.wav 0 ") for line in lines)


def test_reverb_options_through_extra_body(sdk, clip):
    result = _create(
        sdk,
        clip,
        extra_body={"decoding_mode": "ctc_greedy_search", "verbatimicity": "0.5"},
    )
    assert isinstance(result.text, str)


def test_stream_events_in_order(sdk, make_wav, serve_cluster):
    """A two-chunk file streams one delta per chunk, then the full text."""
    import httpx

    audio = make_wav(24.0, 21)
    expected = httpx.post(
        serve_cluster.base_url + "/v1/audio/transcriptions",
        files={"file": ("long.wav", audio, "audio/wav")},
        data={"decoding_mode": "ctc_prefix_beam_search"},
        timeout=120,
    ).json()["text"]
    stream = sdk.audio.transcriptions.create(
        model="whisper-1",
        file=("long.wav", audio, "audio/wav"),
        stream=True,
        extra_body={"decoding_mode": "ctc_prefix_beam_search"},
    )
    events = list(stream)
    types = [event.type for event in events]
    assert types[-1] == "transcript.text.done"
    assert set(types[:-1]) <= {"transcript.text.delta"}
    assert len(types) >= 3, "two chunks with words should give two deltas"
    deltas = "".join(event.delta for event in events[:-1])
    assert deltas == events[-1].text == expected


def test_unknown_model_is_not_found(sdk, clip):
    import openai

    with pytest.raises(openai.NotFoundError) as info:
        sdk.audio.transcriptions.create(model="gpt-9", file=("clip.wav", clip, "audio/wav"))
    assert info.value.body["param"] == "model"


def test_models_list_and_retrieve(sdk):
    import openai

    ids = [model.id for model in sdk.models.list()]
    assert "whisper-1" in ids
    assert sdk.models.retrieve("whisper-1").id == "whisper-1"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("no-such-model")
