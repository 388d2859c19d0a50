"""How many transcriptions one client may hold at once on an Ingress replica (429)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.serve.http_errors import error_response
from serve_app.wire import RateLimitError


class PerClientLimit:
    """429 for a transcription from a client that already holds
    ``max_requests_per_client`` of them on this replica, from arrival until its
    response has been sent (SSE included), so one client cannot fill the queue that
    every client shares. Clients are told apart by the peer address, or by
    ``client_id_header`` when a trusted proxy sets it; counts of clients with nothing
    held are dropped, so the table is no bigger than the requests held."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        id_header: str | None,
        retry_after_s: int,
        counts: Callable[[Scope], bool],
    ) -> None:
        self.app = app
        self._counts = counts
        """Which requests are transcriptions (the edge knows its routes)."""
        self._limit = limit
        self._retry_after_s = retry_after_s
        self._id_header = id_header.lower().encode("latin-1") if id_header else None
        self._held: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._counts(scope):
            await self.app(scope, receive, send)
            return
        client = self._client(scope)
        held = self._held.get(client, 0)
        if held >= self._limit:
            error = RateLimitError(
                f"This client already has {held} transcriptions in progress, the most one "
                "client may have; retry when one has finished."
            )
            await error_response(error, retry_after_s=self._retry_after_s)(scope, receive, send)
            return
        self._held[client] = held + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self._held[client] - 1
            if left:
                self._held[client] = left
            else:
                del self._held[client]

    def _client(self, scope: Scope) -> str:
        if self._id_header is not None:
            for name, value in scope.get("headers", []):
                if name == self._id_header:
                    return "h:" + value.decode("latin-1")[:256]
        peer = scope.get("client")
        return "a:" + (peer[0] if peer else "unknown")
