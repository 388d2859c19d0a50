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

    Busy time only: an idle minute says nothing about speed, so it must neither lower
    the rate nor age the evidence. Until ``min_evidence_s`` of busy time is seen, the
    rate is ``prior``, the operator's guess. ``started``/``finished`` count chunk calls
    (busy while any is out); ``mark`` sets busy directly for other definitions of it.
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
        self._busy = False
        self._since = clock()

    def _advance(self) -> None:
        now = self._clock()
        if self._busy:
            elapsed = now - self._since
            keep = 0.5 ** (elapsed / self._halflife_s)
            self._done_audio_s *= keep
            self._busy_s = self._busy_s * keep + elapsed
        self._since = now

    def mark(self, busy: bool) -> None:
        """From now on the time counts (or not)."""
        self._advance()
        self._busy = busy

    def add(self, audio_s: float) -> None:
        """``audio_s`` more audio was decoded."""
        self._advance()
        self._done_audio_s += audio_s

    def started(self) -> None:
        """A chunk call went out."""
        self._outstanding += 1
        self.mark(True)

    def finished(self, audio_s: float) -> None:
        """A chunk call ended; ``audio_s`` is what it decoded (0 if it failed)."""
        self.add(audio_s)
        self._outstanding -= 1
        self.mark(self._outstanding > 0)

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
    """Slots on the model, a FIFO queue for them, and the audio still ahead.

    A queue drains at the rate the model reaches when every slot is busy, which with
    batching is far above the rate seen while requests trickle in one at a time. So
    waits are projected only from a rate measured while every slot was busy; until the
    first second of that, only the queue's length refuses. Guessing high costs a few
    requests a longer wait; guessing low refuses requests that would have been served
    in seconds, which is the failure this module is for.
    """

    def __init__(
        self,
        policy: QueuePolicy,
        meter: ThroughputMeter,
        saturated: ThroughputMeter | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        if policy.slots < 1:
            raise ValueError("at least one slot is needed")
        self.policy = policy
        self._on_change = on_change or (lambda: None)
        """Called after the queue or the audio ahead changed (metrics read them then)."""
        self.meter = meter
        self.saturated = saturated or ThroughputMeter(meter.prior)
        """Busy only while every slot is taken."""
        self._free = policy.slots
        self._waiters: deque[tuple[asyncio.Future[None], float]] = deque()
        self._queued_audio_s = 0.0
        self._running_audio_s = 0.0
        self._log_audio: float | None = None

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

    def projected_wait_s(self, unplanned: int = 0) -> float:
        """How long a request arriving now would wait before its first chunk runs, with
        ``unplanned`` requests ahead of it whose length is not known yet (still
        arriving or decoding: each counted at the typical length). 0 while a slot is
        free for it, or until the drain rate has been measured while saturated."""
        if (self._free > unplanned and not self._waiters) or not self.saturated.measured:
            return 0.0
        ahead_s = self.audio_ahead_s + unplanned * self.typical_request_audio_s
        return ahead_s / self.drain_rate

    @property
    def typical_request_audio_s(self) -> float:
        """A running geometric mean of the requests' audio: one 2-hour file among short
        clips should not make every clip still arriving count as a long one."""
        return 0.0 if self._log_audio is None else math.exp(self._log_audio)

    @property
    def drain_rate(self) -> float:
        """Audio-seconds per second the queue drains at (see the class docstring)."""
        return max(self.saturated.rate, self.meter.rate)

    async def acquire(self, audio_s: float, max_wait_s: float | None = None) -> None:
        """Take a slot for a request of ``audio_s``, waiting in line when none is free.

        Raises ``OverloadedError`` (with ``retry_after_s``) without waiting when the
        queue is full or the projected wait exceeds ``max_wait_s`` (the policy's unless
        given). Before the first saturated measurement only the queue's length refuses:
        a cold server does not turn a burst away on a guess.
        """
        limit_s = self.policy.max_wait_s if max_wait_s is None else max_wait_s
        log_audio = math.log(max(audio_s, 0.1))
        self._log_audio = (
            log_audio if self._log_audio is None else self._log_audio * 0.9 + log_audio * 0.1
        )
        if self._free > 0 and not self._waiters:
            self._free -= 1
            self.saturated.mark(self._free == 0)
            self._running_audio_s += audio_s
            self._on_change()
            return
        wait_s = self.projected_wait_s()
        if len(self._waiters) >= self.policy.max_queued:
            raise self.refusal(f"{len(self._waiters)} transcriptions are already waiting", wait_s)
        if wait_s > limit_s:
            raise self.too_long_a_wait(wait_s, limit_s)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (turn, audio_s)
        self._waiters.append(entry)
        self._queued_audio_s += audio_s
        self._on_change()
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
            self._on_change()
        self._running_audio_s += audio_s
        self._on_change()

    def progress(self, audio_s: float, decoded: bool = False) -> None:
        """Part of a running request's audio is done (``decoded``), or will not be run."""
        self._running_audio_s = max(self._running_audio_s - audio_s, 0.0)
        if decoded and self._free == 0:
            self.saturated.add(audio_s)
        self._on_change()

    def release(self, remaining_audio_s: float = 0.0) -> None:
        """Give a slot back; ``remaining_audio_s`` of its request was never decoded."""
        self.progress(remaining_audio_s)
        while self._waiters:
            turn, _ = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes straight to the next in line
                return
        self._free += 1
        self.saturated.mark(False)

    def too_long_a_wait(self, wait_s: float, limit_s: float | None = None) -> OverloadedError:
        """The refusal for a projected wait over the limit, retry when it would fit."""
        limit_s = self.policy.max_wait_s if limit_s is None else limit_s
        return self.refusal(
            f"the projected wait is {wait_s:.0f} s (the limit is {limit_s:.0f} s)",
            wait_s - limit_s,
        )

    def refusal(self, why: str, retry_in_s: float) -> OverloadedError:
        """A 503 saying why; Retry-After from ``retry_in_s`` when known (> 0)."""
        error = OverloadedError(f"The server is busy: {why}; retry shortly.")
        if retry_in_s > 0:  # else the config's Retry-After
            error.retry_after_s = max(1, math.ceil(retry_in_s))
        return error
