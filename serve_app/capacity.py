"""How much an Ingress may put on the model at once, and who waits for the rest.

Refusing a request the moment every slot is taken turns a burst that would drain in
seconds into 503s; queueing without a bound turns overload into timeouts for
everyone. So requests wait in one FIFO queue, and a request is refused only when the
wait it would face is longer than the operator allows. That wait is projected from the
audio ahead of it (what is still running plus what is queued) and the rate at which
this Ingress's requests have actually been decoded, measured, so the same settings
hold on a CPU box and on an H200. The same projection gives the Retry-After that a
refused client is told, and the default deadline of an admitted request.

Single event loop: no locks. Knows neither Ray nor HTTP.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from serve_app.wire import OverloadedError


class ThroughputMeter:
    """Audio-seconds decoded per second of busy time, decayed over ``halflife_s`` of it.

    Busy time only (some chunk outstanding): an idle minute says nothing about speed,
    so it must neither lower the rate nor age the evidence. Until ``min_evidence_s`` of
    busy time is seen, the rate is ``prior``, the operator's guess.
    """

    def __init__(
        self,
        prior: float,
        *,
        halflife_s: float = 30.0,
        min_evidence_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if prior <= 0:
            raise ValueError("the prior throughput must be positive")
        self.prior = prior
        self._halflife_s = halflife_s
        self._min_evidence_s = min_evidence_s
        self._clock = clock
        self._done_audio_s = 0.0
        self._busy_s = 0.0
        self._outstanding = 0
        self._since = clock()

    def _advance(self) -> None:
        now = self._clock()
        if self._outstanding > 0:
            elapsed = now - self._since
            keep = 0.5 ** (elapsed / self._halflife_s)
            self._done_audio_s *= keep
            self._busy_s = self._busy_s * keep + elapsed
        self._since = now

    def started(self) -> None:
        """A chunk call went out."""
        self._advance()
        self._outstanding += 1

    def finished(self, audio_s: float) -> None:
        """A chunk call ended; ``audio_s`` is what it decoded (0 if it failed)."""
        self._advance()
        self._outstanding -= 1
        self._done_audio_s += audio_s

    @property
    def measured(self) -> bool:
        """Whether ``rate`` comes from evidence rather than the prior."""
        self._advance()
        return self._busy_s >= self._min_evidence_s and self._done_audio_s > 0

    @property
    def rate(self) -> float:
        """Audio-seconds per second (the prior until there is evidence)."""
        if not self.measured:
            return self.prior
        return self._done_audio_s / self._busy_s


@dataclass(frozen=True)
class QueuePolicy:
    """When a request waits and when it is refused; from the app's config."""

    slots: int
    """Requests on the model at once (per Ingress)."""
    max_queued: int
    """Requests waiting for a slot; more are refused at once."""
    max_wait_s: float
    """Refuse a request whose projected wait is longer."""


class ModelCapacity:
    """Slots on the model, a FIFO queue for them, and the audio still ahead."""

    def __init__(self, policy: QueuePolicy, meter: ThroughputMeter) -> None:
        if policy.slots < 1:
            raise ValueError("at least one slot is needed")
        self.policy = policy
        self.meter = meter
        self._free = policy.slots
        self._waiters: deque[tuple[asyncio.Future[None], float]] = deque()
        self._queued_audio_s = 0.0
        self._running_audio_s = 0.0

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def running(self) -> int:
        return self.policy.slots - self._free

    @property
    def audio_ahead_s(self) -> float:
        """Audio not yet decoded: running requests' remaining chunks plus the queue."""
        return self._running_audio_s + self._queued_audio_s

    def projected_wait_s(self) -> float:
        """How long a request arriving now would wait before its first chunk runs
        (0 while a slot is free, or while nothing has been measured yet)."""
        if (self._free > 0 and not self._waiters) or not self.meter.measured:
            return 0.0
        return self.audio_ahead_s / self.meter.rate

    async def acquire(self, audio_s: float) -> None:
        """Take a slot for a request of ``audio_s``, waiting in line when none is free.

        Raises ``OverloadedError`` (with ``retry_after_s``) without waiting when the
        queue is full or the projected wait exceeds ``max_wait_s``. Before the first
        measurement only the queue's length refuses: a cold server does not turn a
        burst away on a guess.
        """
        if self._free > 0 and not self._waiters:
            self._free -= 1
            self._running_audio_s += audio_s
            return
        wait_s = self.projected_wait_s()
        if len(self._waiters) >= self.policy.max_queued:
            raise self._refusal(f"{len(self._waiters)} transcriptions are already waiting", wait_s)
        if wait_s > self.policy.max_wait_s:
            raise self._refusal(
                f"the projected wait is {wait_s:.0f} s (the limit is {self.policy.max_wait_s:g} s)",
                wait_s - self.policy.max_wait_s,
            )
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (turn, audio_s)
        self._waiters.append(entry)
        self._queued_audio_s += audio_s
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # granted as we were cancelled
                self._running_audio_s += audio_s
                self.release(audio_s)
            else:
                self._waiters.remove(entry)
            raise
        finally:
            self._queued_audio_s -= audio_s
        self._running_audio_s += audio_s

    def progress(self, audio_s: float) -> None:
        """Part of a running request's audio is done (or will not be run)."""
        self._running_audio_s = max(self._running_audio_s - audio_s, 0.0)

    def release(self, remaining_audio_s: float = 0.0) -> None:
        """Give a slot back; ``remaining_audio_s`` of its request was never decoded."""
        self.progress(remaining_audio_s)
        while self._waiters:
            turn, _ = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes straight to the next in line
                return
        self._free += 1

    def _refusal(self, why: str, retry_in_s: float) -> OverloadedError:
        error = OverloadedError(f"The server is busy: {why}; retry shortly.")
        if retry_in_s > 0:  # else the config's Retry-After
            error.retry_after_s = max(1, math.ceil(retry_in_s))
        return error
