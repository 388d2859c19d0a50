"""The HTTP contract as pydantic models: FastAPI parses requests into them and
generates ``/openapi.json`` from them, so the docs cannot drift from the parser.

The transcription form is OpenAI's multipart fields plus Reverb's decoding options
(inherited from :class:`RequestOptions`, so the handle API validates the same way).
Response bodies reuse the OpenAI SDK's own types where they fit and extend them with
Reverb's word confidences.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import UploadFile
from openai.types import Model as OpenAIModel
from openai.types.audio import Transcription, TranscriptionSegment, TranscriptionVerbose
from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field

from serve_app.engine.formats import Granularity, ResponseFormat
from serve_app.request_options import RequestOptions


def _split_commas(value: Any) -> Any:
    """``word,segment`` in one field means both, as some clients send it."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list):
        return value
    return [p.strip() for v in values for p in str(v).split(",") if p.strip()]


def _list_field(name: str, description: str) -> Any:
    """A list field the OpenAI SDK sends as ``name[]``; plain ``name`` works too."""
    return Field(
        default_factory=list,
        validation_alias=AliasChoices(f"{name}[]", name),
        serialization_alias=f"{name}[]",
        description=description,
    )


_IGNORED = "Accepted for OpenAI compatibility and ignored by Reverb."


def _absent_not_null(schema: dict[str, Any]) -> None:
    """A multipart field is sent or left out; it cannot be null. Say so in the schema
    (drop the ``null`` branch pydantic gives optional fields), so that clients and
    schema fuzzers do not send the text "null" for a field they mean to omit."""
    for prop in schema.get("properties", {}).values():
        branches = prop.get("anyOf")
        if branches and {"type": "null"} in branches:
            rest = [b for b in branches if b != {"type": "null"}]
            del prop["anyOf"]
            if len(rest) == 1:
                prop.update(rest[0])
            else:
                prop["anyOf"] = rest


class TranscriptionForm(RequestOptions):
    """``POST /v1/audio/transcriptions`` (multipart/form-data)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        arbitrary_types_allowed=True,
        json_schema_extra=_absent_not_null,
    )

    file: UploadFile = Field(
        description="The audio file: wav, flac, mp3, ogg/opus, webm/opus, m4a/aac and "
        "other formats FFmpeg decodes; limits on bytes and seconds are in the app config."
    )
    model: str | None = Field(
        None, description="A model id from /v1/models (aliases such as whisper-1 work)."
    )
    response_format: ResponseFormat = Field(
        "json",
        description="json, text, srt, vtt, verbose_json (OpenAI's shapes) or Rev's ctm.",
    )
    timestamp_granularities: Annotated[list[Granularity], BeforeValidator(_split_commas)] = (
        _list_field(
            "timestamp_granularities",
            "verbose_json: 'segment' (default) and/or 'word' lists; json adds 'words' for 'word'.",
        )
    )
    stream: bool = Field(
        False,
        description="Send server-sent events: transcript.text.delta per chunk as it "
        "finishes, in order, then transcript.text.done.",
    )
    temperature: float = Field(
        0.0, ge=0.0, le=1.0, description=f"{_IGNORED} Decoding is deterministic."
    )
    prompt: str | None = Field(None, description=f"{_IGNORED} Reverb takes no prompt.")
    chunking_strategy: str | None = Field(None, description=f"{_IGNORED} Chunks are Rev's.")
    include: list[str] = _list_field("include", _IGNORED)
    known_speaker_names: list[str] = _list_field("known_speaker_names", _IGNORED)
    known_speaker_references: list[str] = _list_field("known_speaker_references", _IGNORED)
    keywords: list[str] = _list_field("keywords", _IGNORED)
    languages: list[str] = _list_field("languages", _IGNORED)

    @property
    def granularities(self) -> frozenset[str]:
        return frozenset(self.timestamp_granularities) or frozenset({"segment"})


# ----------------------------------------------------------------------- responses


class WordOut(BaseModel):
    """OpenAI's word plus Reverb's confidence."""

    word: str
    start: float
    end: float
    confidence: float = Field(description="Posterior confidence of the word, 0 to 1.")


class TranscriptionJson(Transcription):
    """``response_format=json``; ``words`` only when word timestamps were asked for."""

    words: list[WordOut] | None = None


class SegmentOut(TranscriptionSegment):
    """OpenAI's segment plus its words and mean confidence."""

    confidence: float
    words: list[WordOut]


class TranscriptionVerboseJson(TranscriptionVerbose):
    """``response_format=verbose_json``."""

    task: Literal["transcribe"] = "transcribe"
    segments: list[SegmentOut] | None = None  # type: ignore[assignment]
    words: list[WordOut] | None = None  # type: ignore[assignment]


class ModelObject(OpenAIModel):
    """One served model id (the model or one of its aliases)."""

    root: str = Field(description="The id of the model this id serves.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every 4xx and 5xx: OpenAI's error envelope."""

    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    status: Literal["ready"] = "ready"
    model: str
    device: str
    parameters: int
    in_flight: int = Field(description="Transcriptions this Ingress replica is running.")
    decoded_audio_seconds: float = Field(
        0.0, description="Decoded audio this Ingress replica holds (see its budget)."
    )
