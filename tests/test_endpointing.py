"""Endpointing on synthetic CTC blank posteriors (40 ms frames)."""

from __future__ import annotations

import numpy as np

from serve_app.live.endpointing import Endpointer, EndpointRules, SpeechStarted, SpeechStopped

SILENT, SPOKEN = 0.99, 0.1  # blank probabilities
NO_TAIL = {"word_tail_ms": 0}  # frame-level speech, as an energy VAD would see it


def frames(*runs: tuple[float, int]) -> np.ndarray:
    return np.concatenate([np.full(n, p) for p, n in runs])


def feed(ep: Endpointer, blank_probs: np.ndarray) -> list:
    """Every frame, through as many segment ends as they hold (as a live stream feeds
    them, one ``feed_to_stop`` per step and segment)."""
    events, at = [], 0
    while at < len(blank_probs):
        found, used = ep.feed_to_stop(blank_probs[at:])
        events += found
        at += used
    return events


def test_speech_then_a_long_enough_pause_is_one_segment():
    rules = EndpointRules(silence_duration_ms=500, **NO_TAIL)  # 13 frames
    ep = Endpointer(rules)
    events = feed(ep, frames((SILENT, 10), (SPOKEN, 30), (SILENT, 20)))
    assert events == [SpeechStarted(10), SpeechStopped(40)]
    assert not ep.in_speech


def test_a_pause_shorter_than_the_silence_duration_does_not_end_the_segment():
    ep = Endpointer(EndpointRules(silence_duration_ms=500, **NO_TAIL))
    events = feed(ep, frames((SPOKEN, 10), (SILENT, 12), (SPOKEN, 5), (SILENT, 13)))
    assert events == [SpeechStarted(0), SpeechStopped(27)]


def test_fed_frame_by_frame_it_finds_the_same_events():
    posteriors = frames((SILENT, 4), (SPOKEN, 7), (SILENT, 30), (SPOKEN, 3), (SILENT, 2))
    whole = feed(Endpointer(EndpointRules(**NO_TAIL)), posteriors)
    ep = Endpointer(EndpointRules(**NO_TAIL))
    one_by_one = [e for p in posteriors for e in feed(ep, np.array([p]))]
    assert one_by_one == whole == [SpeechStarted(4), SpeechStopped(11), SpeechStarted(41)]


def test_fed_up_to_a_stop_it_leaves_the_frames_after_it_unjudged():
    ep = Endpointer(EndpointRules(silence_duration_ms=200, **NO_TAIL))  # 5 frames
    posteriors = frames((SPOKEN, 3), (SILENT, 6), (SPOKEN, 4))
    assert ep.feed_to_stop(posteriors) == ([SpeechStarted(0), SpeechStopped(3)], 8)
    assert ep.frame == 8 and not ep.in_speech
    assert ep.feed_to_stop(posteriors[8:]) == ([SpeechStarted(9)], 5)


def test_speech_that_never_pauses_is_cut_at_the_segment_cap_and_goes_on():
    rules = EndpointRules(max_segment_ms=2000)  # 50 frames
    events = feed(Endpointer(rules), frames((SPOKEN, 120)))
    assert events == [
        SpeechStarted(0),
        SpeechStopped(50, forced=True),
        SpeechStarted(50),
        SpeechStopped(100, forced=True),
        SpeechStarted(100),
    ]


def test_silence_alone_starts_nothing_and_the_threshold_decides_what_is_speech():
    assert feed(Endpointer(EndpointRules()), frames((SILENT, 500))) == []
    unsure = frames((0.6, 20))  # p(speech) 0.4
    assert feed(Endpointer(EndpointRules(threshold=0.5)), unsure) == []
    assert feed(Endpointer(EndpointRules(threshold=0.3)), unsure) == [SpeechStarted(0)]


def test_ctc_spikes_a_word_apart_are_one_segment_that_ends_after_the_last_word():
    """Real CTC output: one spike per word, blanks between (the demo model's spikes
    within a sentence are up to 16 frames apart)."""
    spiky = [(SILENT, 5)] + [(SPOKEN, 1), (SILENT, 15)] * 6 + [(SILENT, 40)]
    events = feed(Endpointer(EndpointRules(silence_duration_ms=500)), frames(*spiky))
    last_spike = 5 + 5 * 16
    assert events == [SpeechStarted(5), SpeechStopped(last_spike + 1 + 12)]
