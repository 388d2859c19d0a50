"""Where speech starts and stops in a live stream, judged from the model's CTC blanks.

The model already says, every 40 ms frame, how likely it is that nothing is being
said: the CTC blank posterior. WeNet's runtime endpoints on it (``ctc_endpoint.h``):
a frame is silence when its blank probability is above a threshold, and a segment
ends after enough trailing silence following speech, or when it grows too long. The
same rules serve OpenAI's ``turn_detection`` knobs: ``silence_duration_ms`` is the
trailing silence (after the last word's spike and the rest of that word),
``prefix_padding_ms`` how much audio before the first speech frame the segment keeps,
and ``threshold`` (0-1, higher needs louder speech) maps onto the blank threshold. A
segment is also cut at ``max_segment_ms`` whatever is said, because the encoder's
positions and caches must be reset well before 5000 frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME_MS = 40


@dataclass(frozen=True)
class EndpointRules:
    """OpenAI's server VAD settings, in the units the posteriors come in."""

    threshold: float = 0.5
    """OpenAI's VAD threshold: a frame is speech when 1 - p(blank) exceeds it."""
    silence_duration_ms: int = 500
    prefix_padding_ms: int = 300
    max_segment_ms: int = 20_000
    word_tail_ms: int = 480
    """A CTC model marks a word with a spike near its onset and blanks over the rest of
    it, so "silence" counted from the last spike includes that word's own sound. The
    trailing silence is counted from the spike plus this allowance (measured on the
    demo model: spikes within speech are up to 640 ms apart), and the segment's speech
    ends that much after the spike, so its last word is not cut."""

    @property
    def silence_frames(self) -> int:
        return max(1, -(-(self.silence_duration_ms + self.word_tail_ms) // FRAME_MS))

    @property
    def tail_frames(self) -> int:
        return self.word_tail_ms // FRAME_MS

    @property
    def max_frames(self) -> int:
        return max(1, self.max_segment_ms // FRAME_MS)


@dataclass(frozen=True)
class SpeechStarted:
    frame: int
    """The first speech frame (the segment's audio starts prefix_padding_ms before)."""


@dataclass(frozen=True)
class SpeechStopped:
    frame: int
    """One past the last speech frame: where the segment's speech ends."""
    forced: bool = False
    """True when the segment reached max_segment_ms rather than a pause."""


Event = SpeechStarted | SpeechStopped


class Endpointer:
    """Feeds on blank probabilities frame by frame; reports speech starts and stops.

    Frame numbers count from the start of the stream, across segments, so a caller
    can turn them into audio times (``frame * 40 ms``).
    """

    def __init__(self, rules: EndpointRules) -> None:
        self.rules = rules
        self.frame = 0
        self.speech_start: int | None = None
        self._last_speech = 0

    @property
    def in_speech(self) -> bool:
        return self.speech_start is not None

    def feed_to_stop(self, blank_probs: np.ndarray) -> tuple[list[Event], int]:
        """The frames up to and including the one that ends a segment, if one does:
        the events and how many frames were used. A live stream re-decodes the frames
        after a stop in its next segment (fresh caches), so they must not be judged,
        nor decoded, as the ending segment's."""
        speech = (1.0 - np.asarray(blank_probs, dtype=np.float64)) > self.rules.threshold
        events: list[Event] = []
        for used, is_speech in enumerate(speech, start=1):
            stop: SpeechStopped | None = None
            if self.speech_start is None:
                if is_speech:
                    self.speech_start = self._last_speech = self.frame
                    events.append(SpeechStarted(self.frame))
            elif is_speech:
                self._last_speech = self.frame
                if self.frame + 1 - self.speech_start >= self.rules.max_frames:
                    stop = SpeechStopped(self.frame + 1, forced=True)
            elif self.frame - self._last_speech >= self.rules.silence_frames:
                stop = SpeechStopped(self._last_speech + 1 + self.rules.tail_frames)
            self.frame += 1
            if stop is not None:
                self.speech_start = None
                events.append(stop)
                return events, used
        return events, len(speech)
