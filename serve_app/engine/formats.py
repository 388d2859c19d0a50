"""Turn recognised words into segments and render a transcript in a response format.

This module is pure Python (no torch, no Ray) so the HTTP layer, the CLI and the
tests can all render the same way, and so every format is checked in one place.

Formats and the media types they are served with:

==============  ==================================  ===========================================
format          body                                media type
==============  ==================================  ===========================================
json            ``{"text": ...}`` (dict)            ``application/json``
text            text plus one trailing ``"\\n"``    ``text/plain; charset=utf-8``
verbose_json    OpenAI ``TranscriptionVerbose``     ``application/json``
srt             SubRip cues                         ``text/plain; charset=utf-8``
vtt             WebVTT cues                         ``text/vtt; charset=utf-8``
ctm             Rev CLI CTM lines                   ``text/plain; charset=utf-8``
==============  ==================================  ===========================================

SRT has no registered media type (``application/x-subrip`` is informal); OpenAI
serves it as ``text/plain`` and browsers then show it inline instead of
downloading it, so we do the same.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal, get_args

from serve_app.wire import InvalidRequestError, Segment, Transcript, Word

__all__ = [
    "MEDIA_TYPES",
    "RESPONSE_FORMATS",
    "TIMESTAMP_GRANULARITIES",
    "Granularity",
    "ResponseFormat",
    "build_segments",
    "format_timestamp",
    "make_transcript",
    "render",
]

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json", "ctm"]
"""The one list of formats: request models validate against this type, render by it."""
RESPONSE_FORMATS: tuple[str, ...] = get_args(ResponseFormat)

Granularity = Literal["word", "segment"]
TIMESTAMP_GRANULARITIES: frozenset[str] = frozenset(get_args(Granularity))

_TEXT_PLAIN = "text/plain; charset=utf-8"
_JSON = "application/json"

MEDIA_TYPES: dict[str, str] = {
    "json": _JSON,
    "text": _TEXT_PLAIN,
    "srt": _TEXT_PLAIN,
    "vtt": "text/vtt; charset=utf-8",
    "verbose_json": _JSON,
    "ctm": _TEXT_PLAIN,
}

# OpenAI's verbose_json reports the language by its lower-case English name.
_LANGUAGE_NAMES: dict[str, str] = {"en": "english"}

# log(0) is -inf, which is not valid JSON; OpenAI clients expect a finite number.
_MIN_CONFIDENCE_FOR_LOG = 1e-6

_WHITESPACE = re.compile(r"\s")


# --------------------------------------------------------------------------- segmentation


def build_segments(
    words: list[Word],
    *,
    max_gap_s: float = 0.8,
    max_segment_s: float = 10.0,
    max_words: int = 30,
) -> list[Segment]:
    """Group consecutive words into segments (subtitle cues / OpenAI segments).

    A new segment starts when the pause before a word is longer than
    ``max_gap_s`` (a natural sentence or speaker break), or when adding the word
    would make the segment longer than ``max_segment_s`` seconds or more than
    ``max_words`` words (so a cue stays readable on screen). A single word
    longer than ``max_segment_s`` cannot be split and forms its own segment.

    Words are consumed strictly in the order given and never reordered, dropped
    or duplicated: concatenating the segments' words gives back ``words``.
    """
    _check_segment_limits(max_gap_s, max_segment_s, max_words)
    groups: list[list[Word]] = []
    for word in words:
        if groups and _fits(groups[-1], word, max_gap_s, max_segment_s, max_words):
            groups[-1].append(word)
        else:
            groups.append([word])
    return [_make_segment(index, group) for index, group in enumerate(groups)]


def _check_segment_limits(max_gap_s: float, max_segment_s: float, max_words: int) -> None:
    """Reject limits that would make segmentation meaningless, with a clear message."""
    if not max_gap_s >= 0.0:
        raise ValueError(f"max_gap_s must be >= 0, got {max_gap_s!r}")
    if not max_segment_s > 0.0:
        raise ValueError(f"max_segment_s must be > 0, got {max_segment_s!r}")
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words!r}")


def _fits(
    group: list[Word], word: Word, max_gap_s: float, max_segment_s: float, max_words: int
) -> bool:
    """Whether ``word`` may join the open segment ``group`` without breaking a limit."""
    if len(group) >= max_words:
        return False
    if word.start - group[-1].end > max_gap_s:
        return False
    return word.end - group[0].start <= max_segment_s


def _make_segment(index: int, group: list[Word]) -> Segment:
    """Build one segment; its end is clamped so it is never before its start."""
    start = group[0].start
    return Segment(
        id=index,
        start=start,
        end=max(group[-1].end, start),
        text=" ".join(w.word for w in group),
        words=list(group),
        avg_confidence=math.fsum(w.confidence for w in group) / len(group),
    )


def make_transcript(
    words: list[Word],
    *,
    duration: float,
    model: str,
    decoding_mode: str,
    verbatimicity: float,
    language: str = "en",
) -> Transcript:
    """Assemble the engine's result from its words, with default segmentation."""
    return Transcript(
        text=" ".join(w.word for w in words),
        words=list(words),
        segments=build_segments(words),
        duration=duration,
        language=language,
        model=model,
        decoding_mode=decoding_mode,
        verbatimicity=verbatimicity,
    )


# --------------------------------------------------------------------------- rendering


def render(
    transcript: Transcript,
    response_format: str,
    *,
    audio_name: str = "audio",
    timestamp_granularities: frozenset[str] | set[str] = frozenset({"segment"}),
) -> tuple[str | dict[str, Any], str]:
    """Render ``transcript`` as ``response_format``; return ``(body, media_type)``.

    JSON formats return a dict so the HTTP layer serialises once with its own
    encoder; the others return the exact text to send. ``audio_name`` is only
    used by CTM (first column). ``timestamp_granularities`` follows OpenAI: it
    selects ``segments`` and/or ``words`` in verbose_json (and adds ``words``
    to plain json as an extension).

    Raises:
        InvalidRequestError: unknown format (``param="response_format"``) or
            unknown granularity (``param="timestamp_granularities"``).
    """
    if response_format not in RESPONSE_FORMATS:
        raise InvalidRequestError(
            f"Unsupported response_format {response_format!r}; "
            f"allowed values: {', '.join(RESPONSE_FORMATS)}.",
            param="response_format",
        )
    granularities = _check_granularities(timestamp_granularities)
    body = _RENDERERS[response_format](transcript, granularities, audio_name)
    return body, MEDIA_TYPES[response_format]


def _check_granularities(values: Iterable[str]) -> frozenset[str]:
    """Accept only OpenAI's granularities so a typo fails loudly instead of silently."""
    granularities = frozenset(values)
    unknown = granularities - TIMESTAMP_GRANULARITIES
    if unknown:
        raise InvalidRequestError(
            f"Unsupported timestamp_granularities {sorted(unknown)!r}; "
            f"allowed values: {', '.join(sorted(TIMESTAMP_GRANULARITIES))}.",
            param="timestamp_granularities",
        )
    return granularities


def render_json(transcript: Transcript, granularities: frozenset[str]) -> dict[str, Any]:
    """OpenAI's ``json`` body; ``words`` is added only when word timestamps were asked for."""
    body: dict[str, Any] = {"text": transcript.text}
    if "word" in granularities:
        body["words"] = [_word_dict(w) for w in transcript.words]
    return body


def render_text(transcript: Transcript) -> str:
    """The plain text with one trailing newline, as OpenAI's ``text`` format and like a
    POSIX text file (so ``curl ... > out.txt`` and shell pipelines behave)."""
    return transcript.text + "\n"


def render_verbose_json(transcript: Transcript, granularities: frozenset[str]) -> dict[str, Any]:
    """OpenAI's ``verbose_json`` shape, parseable by the SDK's ``TranscriptionVerbose``.

    Whisper-only segment fields have no Reverb equivalent and get neutral values
    (``tokens=[]``, ``temperature=0``, ``compression_ratio=1``,
    ``no_speech_prob=0``); ``avg_logprob`` is the log of the mean word
    confidence, clamped so it stays finite.
    """
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": _LANGUAGE_NAMES.get(transcript.language, transcript.language.lower()),
        "duration": float(transcript.duration),
        "text": transcript.text,
    }
    if "segment" in granularities:
        body["segments"] = [_segment_dict(s) for s in transcript.segments]
    if "word" in granularities:
        body["words"] = [_word_dict(w) for w in transcript.words]
    return body


def _word_dict(word: Word) -> dict[str, Any]:
    """A word as JSON: OpenAI's word fields plus Reverb's confidence."""
    return {
        "word": word.word,
        "start": word.start,
        "end": word.end,
        "confidence": word.confidence,
    }


def _segment_dict(segment: Segment) -> dict[str, Any]:
    """A segment with every field OpenAI's ``TranscriptionSegment`` requires, plus
    ``words`` and ``confidence`` as Reverb extensions."""
    start = max(segment.start, 0.0)
    return {
        "id": segment.id,
        "seek": int(start * 100),
        "start": start,
        "end": max(segment.end, start),
        "text": segment.text,
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": _avg_logprob(segment.avg_confidence),
        "compression_ratio": 1.0,
        "no_speech_prob": 0.0,
        "confidence": segment.avg_confidence,
        "words": [_word_dict(w) for w in segment.words],
    }


def _avg_logprob(confidence: float) -> float:
    """log(confidence) kept finite and <= 0 even for confidence 0 (or NaN, or >1)."""
    if not confidence >= _MIN_CONFIDENCE_FOR_LOG:  # also catches NaN
        confidence = _MIN_CONFIDENCE_FOR_LOG
    return math.log(min(confidence, 1.0))


# --------------------------------------------------------------------------- subtitles


def format_timestamp(seconds: float, *, sep: str) -> str:
    """``HH:MM:SS<sep>mmm`` rounded to the millisecond (``sep`` is ``","`` for SRT,
    ``"."`` for VTT). Negative input is clamped to zero; hours keep at least two
    digits and grow past 99 rather than wrap, so long recordings stay correct."""
    return _format_ms(_to_ms(seconds), sep=sep)


def _to_ms(seconds: float) -> int:
    """Seconds to non-negative whole milliseconds (cue times are ms precision)."""
    if not seconds > 0.0:  # negative, zero or NaN
        return 0
    return round(seconds * 1000)


def _format_ms(ms: int, *, sep: str) -> str:
    """Format whole milliseconds as ``HH:MM:SS<sep>mmm``."""
    hours, rest = divmod(max(ms, 0), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


def _cues(transcript: Transcript) -> list[tuple[int, int, str]]:
    """One ``(start_ms, end_ms, text)`` cue per segment, safe to write as subtitles.

    Times are rounded to ms, then clamped so each cue ends no earlier than it
    starts and starts no earlier than the previous cue ends: players misbehave
    on overlapping or reversed cues, and rounding alone can create an overlap.
    Line breaks inside the text are folded to spaces (a blank line would end
    the cue early); segments with no visible text are skipped.
    """
    cues: list[tuple[int, int, str]] = []
    previous_end = 0
    for segment in transcript.segments:
        text = " ".join(segment.text.split())
        if not text:
            continue
        start = max(_to_ms(segment.start), previous_end)
        end = max(_to_ms(segment.end), start)
        cues.append((start, end, text))
        previous_end = end
    return cues


def render_srt(transcript: Transcript) -> str:
    """SubRip: numbered cues from 1, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, the text,
    and a blank line between cues. No cues gives an empty string (a valid,
    empty SRT file)."""
    blocks = [
        f"{index}\n{_format_ms(start, sep=',')} --> {_format_ms(end, sep=',')}\n{text}\n"
        for index, (start, end, text) in enumerate(_cues(transcript), start=1)
    ]
    return "\n".join(blocks)


def render_vtt(transcript: Transcript) -> str:
    """WebVTT: the ``WEBVTT`` header, then cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm``
    each preceded by a blank line. Cue text is HTML-escaped because WebVTT
    parses ``<``, ``>`` and ``&`` as markup (Rev tags such as ``<laugh>`` would
    otherwise vanish). No cues gives just ``"WEBVTT\\n"``, a valid empty file."""
    blocks = [
        f"\n{_format_ms(start, sep='.')} --> {_format_ms(end, sep='.')}\n{_vtt_escape(text)}\n"
        for start, end, text in _cues(transcript)
    ]
    return "WEBVTT\n" + "".join(blocks)


def _vtt_escape(text: str) -> str:
    """Escape the three characters WebVTT cue text treats as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------- CTM


def render_ctm(transcript: Transcript, audio_name: str = "audio") -> str:
    """CTM lines byte-identical to Rev's CLI (``wenet/cli/utils.py::hyps_to_ctm``).

    Rev writes ``f"{name} 0 {start:.2f} {duration:.2f} {word} {confidence:.2f}"``
    per word and joins the lines with ``"\\n"`` (no trailing newline; no words
    gives ``""``). Rev computes ``start = start_ms / 1000`` and
    ``duration = end_ms / 1000 - start``; our ``Word`` times are those same
    ``ms / 1000`` floats, so ``word.end - word.start`` is the very float Rev
    formats and ``.2f`` rounds it identically. Keep Word times as
    ``ms / 1000`` (not ``ms * 0.001``) or the last digit can differ.

    The one deliberate difference: whitespace in ``audio_name`` becomes ``_``,
    because CTM columns are whitespace separated. Rev uses the file's base name;
    callers should pass that too.
    """
    name = _ctm_name(audio_name)
    return "\n".join(
        f"{name} 0 {w.start:.2f} {w.end - w.start:.2f} {w.word} {w.confidence:.2f}"
        for w in transcript.words
    )


def _ctm_name(audio_name: str) -> str:
    """The CTM first column: whitespace replaced by ``_``; never empty."""
    return _WHITESPACE.sub("_", audio_name) or "audio"


_RENDERERS: dict[str, Callable[[Transcript, frozenset[str], str], str | dict[str, Any]]] = {
    "json": lambda t, granularities, _: render_json(t, granularities),
    "text": lambda t, _, __: render_text(t),
    "verbose_json": lambda t, granularities, _: render_verbose_json(t, granularities),
    "srt": lambda t, _, __: render_srt(t),
    "vtt": lambda t, _, __: render_vtt(t),
    "ctm": lambda t, _, audio_name: render_ctm(t, audio_name),
}
"""Each format's renderer, called with (transcript, granularities, audio name)."""
