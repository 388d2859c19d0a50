"""Decoded samples written into one buffer, whose memory is reserved before it exists.

A 2-hour upload decodes to 460 MB of float32. Collecting pieces and concatenating
them doubles that at the end; a buffer sized from the container's declared duration
holds it once. And since a few hundred kB of Opus can decode to that much, the server
must be able to refuse *before* allocating: every allocation is first offered to a
``reserve`` callback (an Ingress-wide budget), which raises to refuse it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Reserve = Callable[[int], None]
"""Called with a number of samples about to be allocated; raises to refuse them."""

_DEFAULT_GUESS_SAMPLES = 30 * 16000
"""Capacity when the header states no duration: 30 s, then doubling."""


class SampleBuffer:
    """Append-only float32 samples with a hard limit and reserved growth."""

    def __init__(
        self,
        *,
        expected: int | None,
        limit: int | None,
        too_long: Callable[[], Exception],
        reserve: Reserve | None = None,
        margin: int = 4000,
    ) -> None:
        self._limit = limit
        self._too_long = too_long
        self._reserve = reserve
        self._reserved = 0
        self._total = 0
        self._buffer = self._allocate((expected or _DEFAULT_GUESS_SAMPLES) + margin)

    def _allocate(self, capacity: int) -> np.ndarray:
        """A buffer of ``capacity`` samples (never past the limit), reserved first."""
        if self._limit is not None:
            capacity = min(capacity, self._limit)
        if self._reserve is not None and capacity > self._reserved:
            self._reserve(capacity - self._reserved)
        self._reserved = max(self._reserved, capacity)
        return np.empty(capacity, dtype=np.float32)

    def append(self, chunk: np.ndarray) -> None:
        end = self._total + chunk.shape[0]
        if self._limit is not None and end > self._limit:
            raise self._too_long()
        if end > self._buffer.shape[0]:
            grown = self._allocate(max(end, 2 * self._buffer.shape[0]))
            grown[: self._total] = self._buffer[: self._total]
            self._buffer = grown
        self._buffer[self._total : end] = chunk
        self._total = end

    def samples(self) -> np.ndarray:
        """The samples written. A view keeps the buffer alive: fine for the usual small
        slack, not for a header that claimed far more audio than the file held."""
        total = self._total
        small_slack = self._buffer.shape[0] - total <= max(total // 10, 16000)
        return self._buffer[:total] if small_slack else self._buffer[:total].copy()
