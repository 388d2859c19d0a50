"""Admission control for the Ingress: a concurrent-request cap and an upload-size cap.

Both refuse work as early as possible. The request cap answers 503 before the body is
read, so an overloaded replica does not spend memory on uploads it will drop. The
size cap looks at ``Content-Length`` first and then counts the bytes actually
received, because chunked uploads carry no length and a client may lie about it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from starlette.types import Message, Receive

from serve_app.engine.errors import InvalidRequestError, OverloadedError, PayloadTooLargeError


class Slot:
    """One admitted request; releasing twice is harmless (streams release from two places)."""

    def __init__(self, limiter: ConcurrencyLimiter) -> None:
        self._limiter = limiter
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limiter._in_flight -= 1


class ConcurrencyLimiter:
    """Counts requests in flight on this replica's event loop (no lock needed: one loop)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def acquire(self) -> Slot:
        """Admit one request or raise ``OverloadedError`` (503 + Retry-After)."""
        if self._in_flight >= self.limit:
            raise OverloadedError(
                f"The server is at its limit of {self.limit} concurrent transcriptions; "
                "retry shortly."
            )
        self._in_flight += 1
        return Slot(self)

    @contextmanager
    def slot(self) -> Iterator[Slot]:
        """``with limiter.slot():`` for requests that finish inside the block."""
        slot = self.acquire()
        try:
            yield slot
        finally:
            slot.release()


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The upload is larger than the {limit}-byte limit.", param="file")


def check_content_length(headers: Mapping[str, str], limit: int) -> None:
    """Refuse a declared body over ``limit`` before a byte of it is read."""
    declared = headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise InvalidRequestError(f"Invalid Content-Length header {declared!r}.") from None
    if size > limit:
        raise _too_large(limit)


def limited_receive(receive: Receive, limit: int) -> Receive:
    """Wrap an ASGI ``receive`` so that the body stops at ``limit`` bytes with a 413.

    The multipart parser pulls through this, so an oversized chunked upload is cut off
    as soon as it crosses the limit rather than after it has been spooled.
    """
    received = 0

    async def receive_limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
        return message

    return receive_limited
