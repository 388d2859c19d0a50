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
beside the transcription app at ``/``, because an application has one ingress. The
sessions themselves (sockets, auth, limits, the step loop) are
:class:`~serve_app.serve.realtime_sessions.RealtimeSessions`, which needs no Ray; this
module is the Serve shell around it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import FastAPI, WebSocket
from ray import serve

from serve_app.engine.options import DecodeOptions
from serve_app.serve.metrics import RealtimeMetrics
from serve_app.serve.realtime_config import RealtimeConfig
from serve_app.serve.realtime_sessions import RealtimeSessions
from serve_app.serve.transcriber_deployment import load_configured_model


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
    await _this_replica().sessions.serve_session(websocket)


@realtime_app.get("/readyz")
async def readyz() -> dict[str, Any]:
    """The live endpoint's probe, as ``/readyz`` is the file API's (no key): Serve routes
    it only to a replica that has started, its model loaded, so a 200 means sessions
    can be opened; the body says how many this replica holds."""
    return _this_replica().sessions.readiness()


@serve.deployment(name="Realtime", ray_actor_options={"num_cpus": 1})
@serve.ingress(realtime_app)
class Realtime:
    """Owns live sessions and their model (see the module docstring); finals go to the
    transcription app through its handle."""

    def __init__(self, config: RealtimeConfig) -> None:
        self.config = config
        self.sessions = RealtimeSessions(
            config, load_configured_model(config), self._final, RealtimeMetrics()
        )
        self._transcription: Any = None

    async def _final(self, audio: np.ndarray, options: DecodeOptions) -> str:
        if self._transcription is None:
            self._transcription = serve.get_app_handle(self.config.transcription_app)
        transcript = await self._transcription.transcribe.remote(
            audio, **options.model_dump(exclude_defaults=True)
        )
        return transcript.text
