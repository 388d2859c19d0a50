"""The decoded-audio memory one Ingress replica may hold, across all its requests."""

from __future__ import annotations

import threading

from serve_app.engine.chunking import SAMPLE_RATE
from serve_app.wire import OverloadedError


class DecodedAudioBudget:
    """How much decoded audio one Ingress holds at once, in samples.

    A few hundred kB of Opus decode to hundreds of MB, so counting requests bounds
    nothing; counting what their waveforms will occupy does. Decodes run in worker
    threads, hence the lock.
    """

    def __init__(self, max_seconds: float) -> None:
        self.max_samples = round(max_seconds * SAMPLE_RATE)
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held_seconds(self) -> float:
        return self._held / SAMPLE_RATE

    def reserve(self, samples: int) -> None:
        with self._lock:
            if self._held + samples > self.max_samples:
                raise OverloadedError(
                    "The server holds as much decoded audio as it may "
                    f"({self.max_samples / SAMPLE_RATE:g} s); retry shortly."
                )
            self._held += samples

    def release(self, samples: int) -> None:
        with self._lock:
            self._held -= samples
