"""What a realtime replica reports as it works, for metrics; this base ignores it all.

The sessions code runs without Ray (tests drive it through a plain ASGI server), so it
reports to this interface; the Serve deployment passes
:class:`~serve_app.serve.metrics.RealtimeMetrics`, which turns each call into Ray's
Prometheus metrics. Calls come from the event loop, so implementations must be cheap.
"""

from __future__ import annotations


class RealtimeObserver:
    def sessions_open(self, count: int) -> None:
        """How many sessions are open on the replica: at every open and end, and about
        once a second besides (Ray drops a gauge that is not set again within two
        export intervals)."""

    def session_ended(self, reason: str) -> None:
        """A session ended: ``closed`` (by the client), ``expired`` (max_session_s),
        ``slow_reader`` (its events went unread) or ``error``."""

    def session_refused(self, code: str) -> None:
        """A socket was refused before a session began: ``unauthorized``,
        ``invalid_intent`` or ``session_limit_reached``."""

    def step_done(self, rows: int, seconds: float) -> None:
        """One batched chunk step for ``rows`` sessions took ``seconds`` (to keep up, a
        step must stay under the chunk's duration: 320 ms for chunk_size 8)."""

    def step_failed(self, rows: int) -> None:
        """A batched step raised for ``rows`` sessions (all of its rows, or the one
        session whose handling of its result raised); each got an error event."""

    def turn_ended(self, completed: bool, seconds: float, audio_seconds: float) -> None:
        """A turn's final came back (``completed``) or failed, ``seconds`` after the
        turn was committed; the turn held ``audio_seconds`` of audio."""
