"""OpenAI's Realtime transcription protocol: the client events we accept, the session
settings they carry, and the server events we send.

Both session shapes OpenAI has published are accepted, so existing clients work:

* ``session.update`` with ``session.type == "transcription"`` (the current API):
  ``session.audio.input.{format, transcription, turn_detection}``;
* ``transcription_session.update`` (the earlier beta): ``session.{input_audio_format,
  input_audio_transcription, turn_detection}``.

Reverb's own settings ride in the transcription object beside OpenAI's ``model``,
``language`` and ``prompt``: ``verbatimicity`` (0-1, default 1), ``decoding_mode``
(of the final; default ``attention_rescoring``) and ``chunk_size`` (encoder frames
per partial step, 8 or 16, default 8: a word waits for the end of its chunk, so 320 ms
chunks bring the first delta about 0.3 s sooner than Reverb's 640 ms ones; 16 costs
half the steps per second of audio, for an operator who wants more sessions per
replica). Fields OpenAI defines that Reverb has no use
for (``prompt``, ``noise_reduction``, ``include``) are accepted and ignored; a value
Reverb cannot honour (another audio format, ``semantic_vad``, a language other than
English) is an ``error`` event naming the field.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.engine.options import DecodingMode
from serve_app.live.endpointing import EndpointRules
from serve_app.request_options import english_only

STANDARD_RATE = 24_000
ACCEPTED_RATES = (24_000, 16_000)
MAX_APPEND_BYTES = 15 * 1024 * 1024  # OpenAI's limit per append event


class ProtocolError(Exception):
    """A client event we refuse; sent back as an ``error`` event, the session goes on."""

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


class _Lenient(BaseModel):
    """OpenAI clients send fields we do not use; those are ignored, not refused."""

    model_config = ConfigDict(extra="ignore")


class Transcription(_Lenient):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    verbatimicity: float = Field(1.0, ge=0.0, le=1.0)
    decoding_mode: DecodingMode = "attention_rescoring"
    chunk_size: Literal[8, 16] = 8


class TurnDetection(_Lenient):
    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(300, ge=0, le=5000)
    silence_duration_ms: int = Field(500, ge=40, le=10_000)


class AudioFormat(_Lenient):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000, 16000] = STANDARD_RATE


class _AudioInput(_Lenient):
    format: AudioFormat | None = None
    transcription: Transcription | None = None
    turn_detection: TurnDetection | None = Field(default_factory=TurnDetection)


class _Audio(_Lenient):
    input: _AudioInput = Field(default_factory=_AudioInput)


class CurrentSession(_Lenient):
    type: Literal["transcription"]
    audio: _Audio = Field(default_factory=_Audio)


class EarlierSession(_Lenient):
    input_audio_format: Literal["pcm16"] = "pcm16"
    input_audio_transcription: Transcription | None = None
    turn_detection: TurnDetection | None = Field(default_factory=TurnDetection)


class SessionSettings(BaseModel):
    """What a session runs with, whichever shape set it."""

    model_config = ConfigDict(frozen=True)

    shape: Literal["current", "earlier"] = "current"
    rate: int = STANDARD_RATE
    transcription: Transcription = Field(default_factory=Transcription)
    turn_detection: TurnDetection | None = Field(default_factory=TurnDetection)

    @property
    def endpoint_rules(self) -> EndpointRules | None:
        """None: only the client's commit ends a turn (``turn_detection: null``)."""
        td = self.turn_detection
        if td is None:
            return None
        return EndpointRules(
            threshold=td.threshold,
            silence_duration_ms=td.silence_duration_ms,
            prefix_padding_ms=td.prefix_padding_ms,
        )

    def updated_by(self, event: dict[str, Any]) -> SessionSettings:
        """The settings after a ``session.update`` / ``transcription_session.update``;
        only the fields the event names change."""
        kind, session = event.get("type"), event.get("session")
        if not isinstance(session, dict):
            raise ProtocolError(
                "The event needs a 'session' object.", code="invalid_value", param="session"
            )
        try:
            if kind == "session.update":
                if session.get("type") != "transcription":
                    raise ProtocolError(
                        "This server runs transcription sessions only: set session.type to "
                        "'transcription'.",
                        code="invalid_value",
                        param="session.type",
                    )
                audio_input = session.get("audio", {}).get("input", {})
                parsed = CurrentSession.model_validate(session).audio.input
                changes = self._changes(
                    audio_input, "transcription", "turn_detection", parsed, shape="current"
                )
                if "format" in audio_input and parsed.format is not None:
                    changes["rate"] = parsed.format.rate
            else:
                parsed_earlier = EarlierSession.model_validate(session)
                changes = self._changes(
                    session,
                    "input_audio_transcription",
                    "turn_detection",
                    parsed_earlier,
                    shape="earlier",
                )
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ProtocolError(
                f"Invalid value for session.{where}: {first['msg']}.",
                code="invalid_value",
                param=f"session.{where}",
            ) from None
        settings = self.model_copy(update=changes)
        try:
            english_only(settings.transcription.language)
        except ValueError as exc:
            raise ProtocolError(str(exc), code="unsupported_language", param="language") from None
        return settings

    def _changes(
        self, raw: dict[str, Any], transcription_key: str, turn_key: str, parsed: Any, shape: str
    ) -> dict[str, Any]:
        changes: dict[str, Any] = {"shape": shape}
        if raw.get(transcription_key) is not None:
            changes["transcription"] = getattr(parsed, transcription_key)
        if turn_key in raw:
            changes["turn_detection"] = getattr(parsed, turn_key)
        return changes

    def described(self) -> dict[str, Any]:
        """The session object that session.created / .updated carry, in the shape the
        client used."""
        td = self.turn_detection.model_dump() if self.turn_detection else None
        tr = self.transcription.model_dump()
        if self.shape == "earlier":
            return {
                "object": "realtime.transcription_session",
                "input_audio_format": "pcm16",
                "input_audio_transcription": tr,
                "turn_detection": td,
            }
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": self.rate},
                    "transcription": tr,
                    "turn_detection": td,
                }
            },
        }


def parse_client_event(text: str | bytes) -> dict[str, Any]:
    """One client event as a dict with a known ``type``; ProtocolError otherwise."""
    try:
        event = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ProtocolError("Client events are JSON objects.", code="invalid_json") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ProtocolError("A client event is an object with a 'type'.", code="invalid_event")
    if event["type"] not in CLIENT_EVENTS:
        raise ProtocolError(
            f"Unknown or unsupported event type {event['type'][:64]!r} on a transcription "
            f"session; supported: {', '.join(CLIENT_EVENTS)}.",
            code="invalid_event",
            param="type",
        )
    return event


CLIENT_EVENTS = (
    "session.update",
    "transcription_session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)


def pcm16_samples(event: dict[str, Any], rate: int) -> np.ndarray:
    """The append event's base64 PCM16 (little-endian, mono) as float samples in
    [-1, 1] at ``rate``."""
    audio = event.get("audio")
    if not isinstance(audio, str):
        raise ProtocolError(
            "input_audio_buffer.append needs 'audio' (base64 PCM16).",
            code="invalid_value",
            param="audio",
        )
    if len(audio) > MAX_APPEND_BYTES * 4 // 3 + 4:
        raise ProtocolError(
            "An append event holds at most 15 MiB of audio.", code="invalid_value", param="audio"
        )
    try:
        raw = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(
            "'audio' is not valid base64.", code="invalid_value", param="audio"
        ) from None
    if len(raw) % 2:
        raise ProtocolError(
            "PCM16 audio has an even number of bytes.", code="invalid_value", param="audio"
        )
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def server_event(kind: str, **fields: Any) -> dict[str, Any]:
    """A server event with its own ``event_id``."""
    return {"type": kind, "event_id": new_id("event"), **fields}


def error_event(error: ProtocolError, client_event_id: str | None = None) -> dict[str, Any]:
    return server_event(
        "error",
        error={
            "type": "invalid_request_error",
            "code": error.code,
            "message": str(error),
            "param": error.param,
            "event_id": client_event_id,
        },
    )
