"""The realtime application's ``args``: the transcription app's model settings plus
what a live session may hold."""

from __future__ import annotations

from pydantic import Field

from serve_app.serve.config import AppConfig


class RealtimeConfig(AppConfig):
    """``build_realtime_app`` args. The model fields are the transcription app's (the
    same model must serve both: partials here, finals there)."""

    transcription_app: str = Field(
        "reverb", min_length=1, description="The Serve app whose Ingress transcribes finals."
    )
    max_sessions: int = Field(
        64, ge=1, description="Live sessions per replica; past it a new one is refused."
    )
    max_session_s: float = Field(
        850.0,
        gt=0,
        description="A session's length at most; keep it below Serve's request_timeout_s, "
        "which would end the WebSocket without a word.",
    )
    live_beam_size: int = Field(4, ge=1, le=16, description="Beam of the partials' search.")
