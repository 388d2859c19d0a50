"""Live transcription sessions over WebSocket, without Ray: what one realtime replica
does (see :mod:`serve_app.serve.realtime_deployment` for the topology).

:class:`RealtimeSessions` accepts a socket (API key as a bearer header or OpenAI's
browser subprotocol), refuses past the session limit, relays the session's events,
closes a client that never reads them, and runs the one step loop that decodes every
session's ready chunk in a batched step. Finals come from the ``finals`` callable the
deployment gives it (the transcription app's handle), and what happens goes to a
:class:`~serve_app.serve.realtime_observer.RealtimeObserver` (the deployment's
Prometheus metrics), so the whole of it can be tested with a plain ASGI server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect

from serve_app.engine.model import ReverbModel
from serve_app.engine.options import DecodeOptions
from serve_app.live.decoder import LiveStepper
from serve_app.live.protocol import (
    ProtocolError,
    error_event,
    parse_client_event,
)
from serve_app.live.session import SAMPLE_RATE, FinalTranscriber, LiveSession
from serve_app.serve.realtime_config import RealtimeConfig
from serve_app.serve.realtime_observer import RealtimeObserver

log = logging.getLogger("ray.serve")

STEP_IDLE_S = 0.005
GAUGE_REFRESH_S = 1.0  # the open-sessions gauge is set again this often
MAX_UNSENT_EVENTS = 1000  # a client that sends but never reads is closed past this
CLOSE_WAIT_S = 10  # for the last events and the close frame to go out


class SlowReader(Exception):
    """The client let more than MAX_UNSENT_EVENTS pile up unread."""


KEY_SUBPROTOCOL = "openai-insecure-api-key."
"""Browsers cannot set headers on a WebSocket; OpenAI's clients then send the key as a
subprotocol ``openai-insecure-api-key.<key>`` (the name says what it costs)."""


class RealtimeSessions:
    """One replica's live sessions, their step loop and their model."""

    def __init__(
        self,
        config: RealtimeConfig,
        model: ReverbModel,
        finals: FinalTranscriber,
        observer: RealtimeObserver | None = None,
    ) -> None:
        self.config = config
        self.observer = observer or RealtimeObserver()
        self.api_key = config.resolve_api_key()
        self.model = model
        self.steppers = {size: LiveStepper(model, size) for size in (8, 16)}
        self.sessions: set[LiveSession] = set()
        self._finals = finals
        self._loop: asyncio.Task[None] | None = None

    def readiness(self) -> dict[str, Any]:
        """What the live endpoint's ``/readyz`` reports for this replica."""
        return {
            "status": "ready",
            "model": self.config.served_model_name,  # never the server's own paths
            "device": str(self.model.device),
            "sessions": len(self.sessions),
            "max_sessions": self.config.max_sessions,
        }

    # ------------------------------------------------------------------ the socket

    async def serve_session(self, websocket: WebSocket) -> None:
        subprotocol = self._authorized(websocket)
        if subprotocol is False:
            self.observer.session_refused("unauthorized")
            await websocket.close(code=1008, reason="missing or incorrect API key")
            return
        await websocket.accept(subprotocol=subprotocol or None)
        if websocket.query_params.get("intent", "transcription") != "transcription":
            await self._refuse(
                websocket, "This server runs transcription sessions only.", "invalid_intent"
            )
            return
        if len(self.sessions) >= self.config.max_sessions:
            await self._refuse(
                websocket,
                f"The server holds its limit of {self.config.max_sessions} live sessions; "
                "retry shortly.",
                "session_limit_reached",
                close_code=1013,
            )
            return
        self._start_loop()
        session = LiveSession.on_model(
            self.model, self._timed_final, beam_size=self.config.live_beam_size
        )
        self.sessions.add(session)
        self.observer.sessions_open(len(self.sessions))
        sender = asyncio.create_task(self._send_events(websocket, session))
        reads, ended = True, "error"
        try:
            async with asyncio.timeout(self.config.max_session_s):
                await self._receive_events(websocket, session)
        except TimeoutError:
            ended = "expired"
            session.abandon_turn("The session reached its time limit.", "session_expired")
            session.outbox.put_nowait(
                error_event(
                    ProtocolError(
                        f"The session reached its limit of {self.config.max_session_s:g} s; "
                        "open a new one to go on.",
                        code="session_expired",
                    )
                )
            )
        except WebSocketDisconnect:
            ended = "closed"
        except SlowReader:
            reads, ended = False, "slow_reader"
        finally:
            self.sessions.discard(session)
            self.observer.session_ended(ended)
            self.observer.sessions_open(len(self.sessions))
            await session.drain()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            # What is left goes out, unless the client reads nothing: then flushing (or
            # even the close frame) would wait on it for ever, holding the socket.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    if reads:
                        await self._send_all(websocket, session)
                    await websocket.close(code=1000 if reads else 1008)

    async def _receive_events(self, websocket: WebSocket, session: LiveSession) -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            text = message.get("text") if message.get("text") is not None else message.get("bytes")
            if session.outbox.qsize() > MAX_UNSENT_EVENTS:
                log.warning("closing live session %s: its client reads no events", session.id)
                raise SlowReader
            try:
                event = parse_client_event(text or "")
            except ProtocolError as exc:
                session.outbox.put_nowait(error_event(exc))
                continue
            session.handle(event)
            # A message already buffered is received without a pause; yield, so the
            # events it made can go out before the next one is judged (the outbox then
            # grows only when the client does not read them).
            await asyncio.sleep(0)

    async def _send_events(self, websocket: WebSocket, session: LiveSession) -> None:
        while True:
            event = await session.outbox.get()
            await websocket.send_text(json.dumps(event))

    async def _send_all(self, websocket: WebSocket, session: LiveSession) -> None:
        while not session.outbox.empty():
            await websocket.send_text(json.dumps(session.outbox.get_nowait()))

    async def _refuse(
        self, websocket: WebSocket, message: str, code: str, close_code: int = 1008
    ) -> None:
        self.observer.session_refused(code)
        await websocket.send_text(json.dumps(error_event(ProtocolError(message, code=code))))
        await websocket.close(code=close_code, reason=code)

    def _authorized(self, websocket: WebSocket) -> str | bool:
        """The subprotocol to accept with ("realtime" when offered, as OpenAI's browser
        clients offer it; never the key), or False when a key is needed and missing."""
        offered = [
            p.strip()
            for p in websocket.headers.get("sec-websocket-protocol", "").split(",")
            if p.strip()
        ]
        chosen = "realtime" if "realtime" in offered else ""
        if self.api_key is None:
            return chosen
        digest = hashlib.sha256(self.api_key.encode()).digest()

        def matches(token: str) -> bool:
            return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), digest)

        scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
        keys = [p[len(KEY_SUBPROTOCOL) :] for p in offered if p.startswith(KEY_SUBPROTOCOL)]
        if (scheme.lower() == "bearer" and matches(token.strip())) or any(map(matches, keys)):
            return chosen
        return False

    # ------------------------------------------------------------------ sessions

    async def _timed_final(self, audio: np.ndarray, options: DecodeOptions) -> str:
        """The deployment's finals, timed from the commit for the observer."""
        start, completed = time.monotonic(), False
        try:
            text = await self._finals(audio, options)
            completed = True
            return text
        finally:
            self.observer.turn_ended(completed, time.monotonic() - start, audio.size / SAMPLE_RATE)

    # ------------------------------------------------------------------ the step loop

    def _start_loop(self) -> None:
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._step_forever())

    async def _step_forever(self) -> None:
        reported = time.monotonic()
        while True:
            if time.monotonic() - reported > GAUGE_REFRESH_S:
                self.observer.sessions_open(len(self.sessions))
                reported = time.monotonic()
            stepped = False
            for size, stepper in self.steppers.items():
                ready = [
                    s
                    for s in self.sessions
                    if s.settings.transcription.chunk_size == size and stepper.ready([s.stream])
                ]
                if not ready:
                    continue
                stepped = True
                streams = [s.stream for s in ready]
                started = time.monotonic()
                try:
                    taken = stepper.take(streams)  # on the loop: appends cannot interleave
                    outputs = await asyncio.to_thread(stepper.compute, taken)
                except Exception:
                    log.exception("live step failed for %d sessions", len(ready))
                    self.observer.step_failed(len(ready))
                    for session, stream in zip(ready, streams, strict=True):
                        if session.stream is stream:
                            session.step_failed()
                    continue
                self.observer.step_done(len(ready), time.monotonic() - started)
                for session, stream, out in zip(ready, streams, outputs, strict=True):
                    # Stale if an update, clear or commit started anew while it ran.
                    if session.stream is not stream or stream.segment != out.segment:
                        continue
                    try:
                        session.on_step(out)
                    except Exception:  # one session's fault must not stop the others' loop
                        log.exception("live session %s: its step result failed", session.id)
                        session.step_failed()
                        self.observer.step_failed(1)
            if not stepped:
                await asyncio.sleep(STEP_IDLE_S)
