"""The realtime deployment: live transcription sessions over OpenAI's Realtime protocol.

Topology. Each WebSocket is held by the one replica the proxy routed it to, so a
session's encoder caches and beams stay in that replica's memory, beside the model.
A replica runs one stepping loop: every few milliseconds it takes every session that
has a full chunk and runs one batched encoder step for all of them (see
:mod:`serve_app.live.decoder`). Finals do not use this replica's model: a turn's
audio goes through the transcription app's Ingress handle, the request pipeline that
HTTP and Python callers use, so a live final equals what ``/v1/audio/transcriptions``
returns for the same audio.

It is its own Serve application (``build_realtime_app``), routed at ``/v1/realtime``
beside the transcription app at ``/``, because an application has one ingress.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from typing import Any

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from ray import serve

from serve_app.engine.options import DecodeOptions
from serve_app.live.decoder import LiveStepper, LiveStream
from serve_app.live.protocol import (
    ProtocolError,
    SessionSettings,
    error_event,
    parse_client_event,
)
from serve_app.live.session import LiveSession
from serve_app.serve.realtime_config import RealtimeConfig
from serve_app.serve.transcriber_deployment import load_configured_model

log = logging.getLogger("ray.serve")

STEP_IDLE_S = 0.005
MAX_UNSENT_EVENTS = 1000  # a client that sends but never reads is closed past this


class SlowReader(Exception):
    """The client let more than MAX_UNSENT_EVENTS pile up unread."""


KEY_SUBPROTOCOL = "openai-insecure-api-key."
"""Browsers cannot set headers on a WebSocket; OpenAI's clients then send the key as a
subprotocol ``openai-insecure-api-key.<key>`` (the name says what it costs)."""


class _PrefixIsTheRoute:
    """Serve passes ``/v1/realtime`` with that same prefix as ``root_path``, which
    leaves Starlette an empty route path that no route matches (for HTTP it redirects
    to the slash; a WebSocket has no redirect): the prefix itself is the route ``/``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("websocket", "http") and scope.get("path") == scope.get("root_path"):
            scope = {**scope, "path": scope["path"] + "/"}
        await self.app(scope, receive, send)


realtime_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
realtime_app.add_middleware(_PrefixIsTheRoute)


def _this_replica() -> Realtime:
    return serve.get_replica_context().servable_object


@realtime_app.websocket("/")
async def realtime(websocket: WebSocket) -> None:
    await _this_replica().serve_session(websocket)


@serve.deployment(name="Realtime", ray_actor_options={"num_cpus": 1})
@serve.ingress(realtime_app)
class Realtime:
    """Owns live sessions and their model (see the module docstring)."""

    def __init__(self, config: RealtimeConfig) -> None:
        self.config = config
        self.api_key = config.resolve_api_key()
        self.model = load_configured_model(config)
        self.steppers = {size: LiveStepper(self.model, size) for size in (8, 16)}
        self.sessions: set[LiveSession] = set()
        self._loop: asyncio.Task[None] | None = None
        self._transcription: Any = None

    # ------------------------------------------------------------------ the socket

    async def serve_session(self, websocket: WebSocket) -> None:
        subprotocol = self._authorized(websocket)
        if subprotocol is False:
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
        session = LiveSession(self._new_stream, self._detokenize, self._final)
        self.sessions.add(session)
        sender = asyncio.create_task(self._send_events(websocket, session))
        try:
            async with asyncio.timeout(self.config.max_session_s):
                await self._receive_events(websocket, session)
        except TimeoutError:
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
        except (WebSocketDisconnect, SlowReader):
            pass
        finally:
            self.sessions.discard(session)
            await session.drain()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            with contextlib.suppress(Exception):
                await self._send_all(websocket, session)
                await websocket.close()

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

    def _new_stream(self, settings: SessionSettings) -> LiveStream:
        return LiveStream(
            settings.transcription.verbatimicity,
            beam_size=self.config.live_beam_size,
            device=self.model.device,
            rules=settings.endpoint_rules,
        )

    def _detokenize(self, tokens: tuple[int, ...]) -> str:
        return self.model.tokenizer.detokenize(list(tokens))[0] if tokens else ""

    async def _final(self, audio: np.ndarray, options: DecodeOptions) -> str:
        if self._transcription is None:
            self._transcription = serve.get_app_handle(self.config.transcription_app)
        transcript = await self._transcription.transcribe.remote(
            audio, **options.model_dump(exclude_defaults=True)
        )
        return transcript.text

    # ------------------------------------------------------------------ the step loop

    def _start_loop(self) -> None:
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._step_forever())

    async def _step_forever(self) -> None:
        while True:
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
                try:
                    taken = stepper.take(streams)  # on the loop: appends cannot interleave
                    outputs = await asyncio.to_thread(stepper.compute, taken)
                except Exception:
                    log.exception("live step failed for %d sessions", len(ready))
                    for session, stream in zip(ready, streams, strict=True):
                        if session.stream is stream:
                            session.step_failed()
                    continue
                for session, stream, out in zip(ready, streams, outputs, strict=True):
                    # Stale if an update, clear or commit started anew while it ran.
                    if session.stream is not stream or stream.segment != out.segment:
                        continue
                    try:
                        session.on_step(out)
                    except Exception:  # one session's fault must not stop the others' loop
                        log.exception("live session %s: its step result failed", session.id)
                        session.step_failed()
            if not stepped:
                await asyncio.sleep(STEP_IDLE_S)
