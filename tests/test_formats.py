"""Tests for serve_app.engine.formats: segmentation and every response format.

Subtitle output is parsed back with a small strict parser so the checks are
structural (indices, timestamp syntax, ordering, no overlap), not string
snapshots. Hypothesis drives segmentation and cue-timing properties.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.engine.formats import (
    RESPONSE_FORMATS,
    build_segments,
    format_timestamp,
    make_transcript,
    render,
)
from serve_app.wire import InvalidRequestError, Segment, Transcript, Word

# No example database: keep the shared working tree clean; no deadline: CI boxes vary.
PROPERTY = settings(deadline=None, database=None, max_examples=60)


# --------------------------------------------------------------------------- helpers


def w(text: str, start: float, end: float, confidence: float = 0.9) -> Word:
    return Word(word=text, start=start, end=end, confidence=confidence)


def transcript_of(words: list[Word], duration: float | None = None, **kwargs) -> Transcript:
    if duration is None:
        duration = words[-1].end if words else 0.0
    return make_transcript(
        words,
        duration=duration,
        model="reverb_asr_v1",
        decoding_mode="attention_rescoring",
        verbatimicity=1.0,
        **kwargs,
    )


SAMPLE = transcript_of(
    [
        w("hello", 0.5, 0.9, 0.95),
        w("world", 1.0, 1.4, 0.85),
        # a 2 s pause: new segment
        w("second", 3.4, 3.9, 0.7),
        w("segment", 4.0, 4.6, 0.6),
    ],
    duration=5.0,
)


@dataclass(frozen=True)
class Cue:
    index: int | None
    start_ms: int
    end_ms: int
    text: str


_SRT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d),(\d{3})"
_VTT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d)\.(\d{3})"
_SRT_TIMING = re.compile(rf"^{_SRT_TIME} --> {_SRT_TIME}$")
_VTT_TIMING = re.compile(rf"^{_VTT_TIME} --> {_VTT_TIME}$")


def _ms(h: str, m: str, s: str, ms: str) -> int:
    return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(ms)


def _blocks(body: str) -> list[list[str]]:
    """Split cue text into blocks separated by exactly one blank line."""
    assert body.endswith("\n"), "a non-empty subtitle file ends with a newline"
    assert "\n\n\n" not in body, "blocks are separated by exactly one blank line"
    assert "\r" not in body
    return [block.split("\n") for block in body[:-1].split("\n\n")]


def parse_srt(body: str) -> list[Cue]:
    if body == "":
        return []
    cues = []
    for lines in _blocks(body):
        assert len(lines) >= 3, f"SRT cue needs index, timing and text: {lines!r}"
        assert lines[0].isdigit(), f"bad SRT index {lines[0]!r}"
        match = _SRT_TIMING.match(lines[1])
        assert match, f"bad SRT timing line {lines[1]!r}"
        g = match.groups()
        text_lines = lines[2:]
        assert all(line.strip() for line in text_lines)
        cues.append(Cue(int(lines[0]), _ms(*g[:4]), _ms(*g[4:]), "\n".join(text_lines)))
    return cues


def parse_vtt(body: str) -> list[Cue]:
    assert body.startswith("WEBVTT\n"), "WebVTT must start with the WEBVTT header line"
    rest = body[len("WEBVTT\n") :]
    if rest == "":
        return []
    assert rest.startswith("\n"), "a blank line must follow the header"
    cues = []
    for lines in _blocks(rest[1:]):
        assert len(lines) >= 2, f"VTT cue needs timing and text: {lines!r}"
        match = _VTT_TIMING.match(lines[0])
        assert match, f"bad VTT timing line {lines[0]!r}"
        g = match.groups()
        text = "\n".join(lines[1:])
        assert "-->" not in text and "<" not in text, "cue text must be escaped"
        cues.append(Cue(None, _ms(*g[:4]), _ms(*g[4:]), html.unescape(text)))
    return cues


def assert_well_formed(cues: list[Cue]) -> None:
    previous_end = 0
    for position, cue in enumerate(cues, start=1):
        if cue.index is not None:
            assert cue.index == position
        assert 0 <= cue.start_ms <= cue.end_ms
        assert cue.start_ms >= previous_end, "cues must be ordered and not overlap"
        previous_end = cue.end_ms


def expected_cue_texts(transcript: Transcript) -> list[str]:
    return [" ".join(s.text.split()) for s in transcript.segments if s.text.split()]


def rev_ctm(audio_name: str, path: list[dict]) -> str:
    """Rev's CLI CTM (wenet/cli/utils.py::hyps_to_ctm, joined with newlines)."""
    lines = []
    for line in path:
        start_seconds = line["start_time_ms"] / 1000
        duration_seconds = line["end_time_ms"] / 1000 - start_seconds
        lines.append(
            f"{audio_name} 0 {start_seconds:.2f} {duration_seconds:.2f} "
            f"{line['word']} {line['confidence']:.2f}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- strategies

word_text = st.text(alphabet=st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=8)


@st.composite
def word_lists(draw, max_size: int = 60) -> list[Word]:
    """Ordered, non-overlapping words; gaps from 0 (touching) to several seconds."""
    n = draw(st.integers(min_value=0, max_value=max_size))
    t = draw(st.floats(min_value=0.0, max_value=10.0))
    words = []
    for _ in range(n):
        t += draw(st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=3.0)))
        length = draw(st.floats(min_value=0.0, max_value=4.0))
        conf = draw(st.floats(min_value=0.0, max_value=1.0))
        words.append(Word(word=draw(word_text), start=t, end=t + length, confidence=conf))
        t += length
    return words


@st.composite
def ms_word_lists(draw) -> list[tuple[str, int, int, float]]:
    """Word timings in integer milliseconds, as Rev's aligner produces them."""
    n = draw(st.integers(min_value=0, max_value=40))
    t = draw(st.integers(min_value=0, max_value=10_000_000))
    out = []
    for _ in range(n):
        t += draw(st.integers(min_value=0, max_value=2_000))
        length = draw(st.integers(min_value=0, max_value=3_000))
        conf = draw(st.floats(min_value=0.0, max_value=1.0))
        out.append((draw(word_text), t, t + length, conf))
        t += length
    return out


@st.composite
def arbitrary_segment_transcripts(draw) -> Transcript:
    """Segments with any times (overlapping, reversed, sub-ms apart) to stress clamping."""
    anywhere = st.floats(min_value=-5.0, max_value=400_000.0)
    nudge = st.floats(min_value=-0.002, max_value=0.002)
    segments = []
    previous_end = 0.0
    for index in range(draw(st.integers(min_value=0, max_value=20))):
        start = draw(st.one_of(anywhere, nudge.map(lambda d, p=previous_end: p + d)))
        end = draw(st.one_of(anywhere, st.sampled_from([start + 0.0004, start - 1.0])))
        text = draw(st.one_of(word_text, st.sampled_from(["a\n\nb", "<laugh> & -->", " "])))
        segments.append(Segment(id=index, start=start, end=end, text=text))
        previous_end = end
    return Transcript(text="", words=[], segments=segments, duration=0.0)


# --------------------------------------------------------------------------- build_segments


def test_build_segments_cuts_at_long_pause() -> None:
    assert [s.text for s in SAMPLE.segments] == ["hello world", "second segment"]
    first, second = SAMPLE.segments
    assert (first.id, first.start, first.end) == (0, 0.5, 1.4)
    assert (second.id, second.start, second.end) == (1, 3.4, 4.6)
    assert first.avg_confidence == pytest.approx(0.9)
    assert [x.word for x in second.words] == ["second", "segment"]


def test_build_segments_gap_equal_to_limit_does_not_cut() -> None:
    words = [w("a", 0.0, 1.0), w("b", 1.5, 2.0)]
    assert len(build_segments(words, max_gap_s=0.5)) == 1
    assert len(build_segments(words, max_gap_s=0.49)) == 2


def test_build_segments_max_words() -> None:
    words = [w(str(i), i * 0.1, i * 0.1 + 0.1) for i in range(7)]
    segments = build_segments(words, max_words=3)
    assert [len(s.words) for s in segments] == [3, 3, 1]
    assert [s.id for s in segments] == [0, 1, 2]


def test_build_segments_max_duration_and_long_single_word() -> None:
    words = [w("a", 0.0, 4.0), w("b", 4.0, 8.0), w("c", 8.0, 12.0), w("long", 12.0, 30.0)]
    segments = build_segments(words, max_segment_s=10.0)
    assert [s.text for s in segments] == ["a b", "c", "long"]
    assert segments[-1].end - segments[-1].start == 18.0


def test_build_segments_empty() -> None:
    assert build_segments([]) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"max_gap_s": -1.0}, {"max_segment_s": 0.0}, {"max_words": 0}, {"max_gap_s": math.nan}],
)
def test_build_segments_rejects_bad_limits(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        build_segments([w("a", 0.0, 1.0)], **kwargs)


@PROPERTY
@given(
    words=word_lists(),
    max_gap_s=st.floats(min_value=0.0, max_value=3.0),
    max_segment_s=st.floats(min_value=0.01, max_value=30.0),
    max_words=st.integers(min_value=1, max_value=40),
)
def test_build_segments_properties(
    words: list[Word], max_gap_s: float, max_segment_s: float, max_words: int
) -> None:
    segments = build_segments(
        words, max_gap_s=max_gap_s, max_segment_s=max_segment_s, max_words=max_words
    )
    assert [x for s in segments for x in s.words] == words
    assert [s.id for s in segments] == list(range(len(segments)))
    for s in segments:
        assert s.words, "no empty segments"
        assert len(s.words) <= max_words
        if len(s.words) > 1:
            assert s.words[-1].end - s.words[0].start <= max_segment_s
        for prev, cur in pairwise(s.words):
            assert cur.start - prev.end <= max_gap_s
        assert s.text == " ".join(x.word for x in s.words)
        assert (s.start, s.end) == (s.words[0].start, s.words[-1].end)
        assert s.avg_confidence == pytest.approx(sum(x.confidence for x in s.words) / len(s.words))
    # Each cut happened for a reason: merging across it would break a limit.
    for a, b in pairwise(segments):
        nxt = b.words[0]
        assert (
            len(a.words) >= max_words
            or nxt.start - a.words[-1].end > max_gap_s
            or nxt.end - a.words[0].start > max_segment_s
        )


def test_make_transcript_fields() -> None:
    t = transcript_of([w("hi", 0.0, 0.2), w("there", 0.3, 0.6)], duration=1.0, language="en")
    assert t.text == "hi there"
    assert len(t.segments) == 1
    assert (t.duration, t.model, t.decoding_mode, t.verbatimicity, t.language) == (
        1.0,
        "reverb_asr_v1",
        "attention_rescoring",
        1.0,
        "en",
    )


# --------------------------------------------------------------------------- render: basics


def test_response_formats_constant() -> None:
    assert RESPONSE_FORMATS == ("json", "text", "srt", "vtt", "verbose_json", "ctm")


def test_unknown_format_raises_invalid_request() -> None:
    with pytest.raises(InvalidRequestError) as info:
        render(SAMPLE, "xml")
    assert info.value.param == "response_format"
    assert info.value.status_code == 400
    for name in RESPONSE_FORMATS:
        assert name in info.value.message


def test_unknown_granularity_raises_invalid_request() -> None:
    with pytest.raises(InvalidRequestError) as info:
        render(SAMPLE, "verbose_json", timestamp_granularities={"sentence"})
    assert info.value.param == "timestamp_granularities"


def test_json() -> None:
    body, media = render(SAMPLE, "json")
    assert body == {"text": "hello world second segment"}
    assert media == "application/json"
    body, _ = render(SAMPLE, "json", timestamp_granularities={"word"})
    assert isinstance(body, dict)
    assert [x["word"] for x in body["words"]] == ["hello", "world", "second", "segment"]
    json.dumps(body)


def test_text() -> None:
    body, media = render(SAMPLE, "text")
    assert body == "hello world second segment\n"
    assert media == "text/plain; charset=utf-8"


def test_media_types() -> None:
    media = {fmt: render(SAMPLE, fmt)[1] for fmt in RESPONSE_FORMATS}
    assert media == {
        "json": "application/json",
        "text": "text/plain; charset=utf-8",
        "srt": "text/plain; charset=utf-8",
        "vtt": "text/vtt; charset=utf-8",
        "verbose_json": "application/json",
        "ctm": "text/plain; charset=utf-8",
    }


# --------------------------------------------------------------------------- srt / vtt


def test_srt_exact_sample() -> None:
    body, _ = render(SAMPLE, "srt")
    assert body == (
        "1\n00:00:00,500 --> 00:00:01,400\nhello world\n"
        "\n"
        "2\n00:00:03,400 --> 00:00:04,600\nsecond segment\n"
    )


def test_vtt_exact_sample() -> None:
    body, _ = render(SAMPLE, "vtt")
    assert body == (
        "WEBVTT\n"
        "\n00:00:00.500 --> 00:00:01.400\nhello world\n"
        "\n00:00:03.400 --> 00:00:04.600\nsecond segment\n"
    )


@pytest.mark.parametrize("fmt,parse", [("srt", parse_srt), ("vtt", parse_vtt)])
def test_subtitles_structure(fmt: str, parse) -> None:
    body, _ = render(SAMPLE, fmt)
    cues = parse(body)
    assert_well_formed(cues)
    assert [c.text for c in cues] == [s.text for s in SAMPLE.segments]


def test_vtt_escapes_markup() -> None:
    t = transcript_of([w("<laugh>", 0.0, 0.5), w("A&B", 0.6, 1.0), w("-->", 1.1, 1.2)])
    body, _ = render(t, "vtt")
    assert "&lt;laugh&gt; A&amp;B --&gt;" in body
    assert [c.text for c in parse_vtt(body)] == ["<laugh> A&B -->"]


def test_rounding_overlap_is_clamped() -> None:
    # Segment 0 ends at 1.0004 s (-> 1000 ms); segment 1 starts at 0.9996 s (-> 1000 ms)
    # but also an explicit overlap: segment 2 starts before segment 1 ends.
    t = Transcript(
        text="",
        words=[],
        segments=[
            Segment(id=0, start=0.0, end=1.0006, text="a"),
            Segment(id=1, start=0.9996, end=2.0, text="b"),
            Segment(id=2, start=1.5, end=1.2, text="c"),
        ],
        duration=3.0,
    )
    for fmt, parse in (("srt", parse_srt), ("vtt", parse_vtt)):
        cues = parse(render(t, fmt)[0])
        assert_well_formed(cues)
        assert [(c.start_ms, c.end_ms) for c in cues] == [(0, 1001), (1001, 2000), (2000, 2000)]


@PROPERTY
@given(words=word_lists())
def test_subtitles_of_random_transcripts(words: list[Word]) -> None:
    t = transcript_of(words)
    for fmt, parse in (("srt", parse_srt), ("vtt", parse_vtt)):
        body, _ = render(t, fmt)
        cues = parse(body)
        assert_well_formed(cues)
        assert [c.text for c in cues] == expected_cue_texts(t)


@PROPERTY
@given(t=arbitrary_segment_transcripts())
def test_subtitles_clamp_arbitrary_segments(t: Transcript) -> None:
    for fmt, parse in (("srt", parse_srt), ("vtt", parse_vtt)):
        cues = parse(render(t, fmt)[0])
        assert_well_formed(cues)
        assert [c.text for c in cues] == expected_cue_texts(t)


@pytest.mark.parametrize(
    "seconds,srt,vtt",
    [
        (0.0, "00:00:00,000", "00:00:00.000"),
        (-3.2, "00:00:00,000", "00:00:00.000"),
        (1.2344, "00:00:01,234", "00:00:01.234"),
        (59.9999, "00:01:00,000", "00:01:00.000"),
        (3725.5, "01:02:05,500", "01:02:05.500"),
        (3 * 3600 + 0.001, "03:00:00,001", "03:00:00.001"),
        (360_000.25, "100:00:00,250", "100:00:00.250"),
    ],
)
def test_format_timestamp(seconds: float, srt: str, vtt: str) -> None:
    assert format_timestamp(seconds, sep=",") == srt
    assert format_timestamp(seconds, sep=".") == vtt


def test_long_audio_over_one_hour() -> None:
    t = transcript_of(
        [w("early", 10.0, 10.5), w("late", 3 * 3600 + 61.25, 3 * 3600 + 62.0)],
        duration=3 * 3600 + 70.0,
    )
    srt = render(t, "srt")[0]
    assert "03:01:01,250 --> 03:01:02,000" in srt
    assert_well_formed(parse_srt(srt))
    vtt = render(t, "vtt")[0]
    assert "03:01:01.250 --> 03:01:02.000" in vtt
    assert_well_formed(parse_vtt(vtt))
    assert render(t, "ctm", audio_name="x")[0].splitlines()[1] == "x 0 10861.25 0.75 late 0.90"


# --------------------------------------------------------------------------- verbose_json


def test_verbose_json_shape() -> None:
    body, media = render(SAMPLE, "verbose_json", timestamp_granularities={"word", "segment"})
    assert media == "application/json"
    assert isinstance(body, dict)
    assert body["task"] == "transcribe"
    assert body["language"] == "english"
    assert body["duration"] == 5.0
    assert body["text"] == SAMPLE.text
    seg = body["segments"][1]
    assert seg["seek"] == 340
    assert seg["tokens"] == []
    assert seg["avg_logprob"] == pytest.approx(math.log(0.65))
    assert seg["confidence"] == pytest.approx(0.65)
    assert [x["word"] for x in seg["words"]] == ["second", "segment"]
    starts = [x["start"] for x in body["words"]]
    assert starts == sorted(starts)
    json.dumps(body, allow_nan=False)


def test_verbose_json_granularities() -> None:
    default, _ = render(SAMPLE, "verbose_json")
    assert "segments" in default and "words" not in default
    words_only, _ = render(SAMPLE, "verbose_json", timestamp_granularities=frozenset({"word"}))
    assert "words" in words_only and "segments" not in words_only


def test_verbose_json_zero_confidence_stays_finite() -> None:
    t = transcript_of([w("um", 0.0, 0.3, 0.0)])
    body, _ = render(t, "verbose_json")
    assert isinstance(body, dict)
    logprob = body["segments"][0]["avg_logprob"]
    assert math.isfinite(logprob) and logprob < 0
    json.dumps(body, allow_nan=False)


@pytest.mark.parametrize("granularities", [{"segment"}, {"word"}, {"word", "segment"}, set()])
def test_verbose_json_parses_with_openai_sdk(granularities: set[str]) -> None:
    audio = pytest.importorskip("openai.types.audio")
    body, _ = render(SAMPLE, "verbose_json", timestamp_granularities=granularities)
    parsed = audio.TranscriptionVerbose.model_validate(json.loads(json.dumps(body)))
    assert parsed.text == SAMPLE.text
    assert parsed.language == "english"
    if "segment" in granularities:
        assert parsed.segments is not None
        assert [s.text for s in parsed.segments] == [s.text for s in SAMPLE.segments]
    else:
        assert parsed.segments is None
    if "word" in granularities:
        assert parsed.words is not None
        assert [x.word for x in parsed.words] == [x.word for x in SAMPLE.words]
    else:
        assert parsed.words is None


@PROPERTY
@given(words=word_lists(max_size=20))
def test_verbose_json_random_parses_with_openai_sdk(words: list[Word]) -> None:
    audio = pytest.importorskip("openai.types.audio")
    body, _ = render(transcript_of(words), "verbose_json", timestamp_granularities={"word"})
    parsed = audio.TranscriptionVerbose.model_validate(json.loads(json.dumps(body)))
    assert [x.word for x in parsed.words or []] == [x.word for x in words]


# --------------------------------------------------------------------------- ctm


def test_ctm_hand_made_line() -> None:
    t = transcript_of([w("hello", 1.23, 1.5, 0.91)])
    body, media = render(t, "ctm", audio_name="a.wav")
    assert body == "a.wav 0 1.23 0.27 hello 0.91"
    assert media == "text/plain; charset=utf-8"


def test_ctm_multiple_lines_no_trailing_newline() -> None:
    body, _ = render(SAMPLE, "ctm", audio_name="a.wav")
    assert body == (
        "a.wav 0 0.50 0.40 hello 0.95\n"
        "a.wav 0 1.00 0.40 world 0.85\n"
        "a.wav 0 3.40 0.50 second 0.70\n"
        "a.wav 0 4.00 0.60 segment 0.60"
    )


def test_ctm_audio_name_whitespace() -> None:
    t = transcript_of([w("hi", 0.0, 0.1)])
    assert render(t, "ctm", audio_name="my file\t1.wav")[0].startswith("my_file_1.wav 0 ")
    assert render(t, "ctm")[0].startswith("audio 0 ")
    assert render(t, "ctm", audio_name="")[0].startswith("audio 0 ")


@PROPERTY
@given(items=ms_word_lists())
def test_ctm_byte_identical_to_rev(items: list[tuple[str, int, int, float]]) -> None:
    words = [Word(word=x, start=s / 1000, end=e / 1000, confidence=c) for x, s, e, c in items]
    path = [
        {"word": x, "start_time_ms": s, "end_time_ms": e, "confidence": c} for x, s, e, c in items
    ]
    body, _ = render(transcript_of(words), "ctm", audio_name="talk.wav")
    assert body == rev_ctm("talk.wav", path)


# --------------------------------------------------------------------------- edge cases


EMPTY = transcript_of([], duration=0.0)


def test_empty_transcript_every_format() -> None:
    expected = {
        "json": {"text": ""},
        "text": "\n",
        "srt": "",
        "vtt": "WEBVTT\n",
        "ctm": "",
    }
    for fmt, body in expected.items():
        assert render(EMPTY, fmt)[0] == body, fmt
    assert parse_srt(render(EMPTY, "srt")[0]) == []
    assert parse_vtt(render(EMPTY, "vtt")[0]) == []
    verbose, _ = render(EMPTY, "verbose_json", timestamp_granularities={"word", "segment"})
    assert verbose == {
        "task": "transcribe",
        "language": "english",
        "duration": 0.0,
        "text": "",
        "segments": [],
        "words": [],
    }
    assert render(EMPTY, "json", timestamp_granularities={"word"})[0] == {"text": "", "words": []}


def test_unicode_words() -> None:
    words = [w("naïve", 0.0, 0.4), w("日本語", 0.5, 0.9), w("🎉", 1.0, 1.2), w("Ωmega", 1.3, 1.5)]
    t = transcript_of(words)
    assert render(t, "text")[0] == "naïve 日本語 🎉 Ωmega\n"
    assert render(t, "json")[0] == {"text": "naïve 日本語 🎉 Ωmega"}
    assert [c.text for c in parse_srt(render(t, "srt")[0])] == ["naïve 日本語 🎉 Ωmega"]
    assert [c.text for c in parse_vtt(render(t, "vtt")[0])] == ["naïve 日本語 🎉 Ωmega"]
    ctm = render(t, "ctm", audio_name="ü.wav")[0]
    assert ctm.splitlines()[1] == "ü.wav 0 0.50 0.40 日本語 0.90"
    ctm.encode("utf-8")
