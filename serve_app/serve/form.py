"""Turn an OpenAI-style transcription request into validated values, or a 400.

The multipart fields arrive as strings. OpenAI's own fields are checked here; the
Reverb extensions (``verbatimicity``, ``decoding_mode``, ...) are exactly the fields
of :class:`DecodeOptions`, so pydantic validates them and its first error becomes a
400 whose ``param`` names the field. The Python handle API goes through
:func:`parse_options` too, so both entry points accept and refuse the same things.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from serve_app.engine.errors import InvalidRequestError
from serve_app.engine.formats import RESPONSE_FORMATS, TIMESTAMP_GRANULARITIES
from serve_app.engine.options import DecodeOptions
from serve_app.serve.errors import MissingParameterError, UnknownModelError

OPTION_FIELDS: frozenset[str] = frozenset(DecodeOptions.model_fields)
"""Reverb extension fields: one per DecodeOptions field."""

# OpenAI fields we accept and ignore: Reverb has no prompt conditioning or sampling
# temperature, and the rest belong to other OpenAI models. The SDK sends list
# fields with a "[]" suffix.
_IGNORED_FIELDS: frozenset[str] = frozenset(
    {
        "prompt",
        "chunking_strategy",
        "include",
        "include[]",
        "keywords",
        "keywords[]",
        "known_speaker_names",
        "known_speaker_names[]",
        "known_speaker_references",
        "known_speaker_references[]",
        "languages",
        "languages[]",
    }
)
_GRANULARITY_FIELDS = ("timestamp_granularities[]", "timestamp_granularities")
_KNOWN_FIELDS = frozenset(
    {"file", "model", "language", "response_format", "temperature", "stream"}
    | set(_GRANULARITY_FIELDS)
)
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True)
class TranscriptionForm:
    """A validated ``POST /v1/audio/transcriptions``."""

    audio: bytes
    filename: str
    model: str
    response_format: str
    timestamp_granularities: frozenset[str]
    stream: bool
    options: DecodeOptions


def parse_options(values: Mapping[str, Any]) -> DecodeOptions:
    """Validate Reverb decoding options; the first problem becomes a 400 naming its field."""
    try:
        return DecodeOptions.model_validate(dict(values))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = str(first["loc"][0]) if first["loc"] else None
        if first["type"] == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {param}."
        else:
            message = f"Invalid value for {param}: {first['msg']}."
        raise InvalidRequestError(message, param=param) from None


async def parse_transcription_form(
    form: FormData, *, model_ids: Iterable[str], default_model: str
) -> TranscriptionForm:
    """Validate every field, then read the upload (already spooled by the parser)."""
    sent = {name for name, value in form.multi_items() if not _is_blank(value)}
    unknown = sorted(sent - _KNOWN_FIELDS - _IGNORED_FIELDS - OPTION_FIELDS)
    if unknown:
        raise InvalidRequestError(
            f"Unrecognized request argument supplied: {unknown[0]}.", param=unknown[0]
        )
    upload = form.get("file")
    if upload is None:
        raise MissingParameterError("You must provide a 'file' to transcribe.", param="file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequestError(
            "'file' must be an uploaded file (multipart file part), not a text field.",
            param="file",
        )
    model = _text(form, "model") or default_model
    served = list(model_ids)
    if model not in served:
        raise UnknownModelError(
            f"The model {model!r} does not exist; use one of {', '.join(served)}.",
            param="model",
        )
    check_language(_text(form, "language"))
    _check_temperature(_text(form, "temperature"))
    response_format = _text(form, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise InvalidRequestError(
            f"Unsupported response_format {response_format!r}; allowed values: "
            f"{', '.join(RESPONSE_FORMATS)}.",
            param="response_format",
        )
    options = parse_options(
        {name: value for name in OPTION_FIELDS if (value := _text(form, name)) is not None}
    )
    granularities = _granularities(form)
    stream = _boolean(_text(form, "stream"), "stream")
    audio = await upload.read()
    filename = PurePath(upload.filename or "audio").name or "audio"
    return TranscriptionForm(
        audio=audio,
        filename=filename,
        model=model,
        response_format=response_format,
        timestamp_granularities=granularities,
        stream=stream,
        options=options,
    )


def _is_blank(value: str | UploadFile) -> bool:
    """Clients send ``language=`` for "unset"; an empty text field means the default."""
    return isinstance(value, str) and not value.strip()


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequestError(f"'{name}' must be a text field, not a file.", param=name)
    return value.strip() or None


def check_language(language: str | None) -> None:
    """Reverb is an English model; refuse other languages rather than return nonsense."""
    if language is None:
        return
    tag = language.lower()
    if tag in ("en", "english") or tag.startswith("en-") or tag.startswith("en_"):
        return
    raise InvalidRequestError(
        f"Unsupported language {language!r}: this model transcribes English only ('en').",
        param="language",
    )


def _check_temperature(value: str | None) -> None:
    """Accepted for compatibility and ignored (decoding is deterministic), but must parse."""
    if value is None:
        return
    try:
        temperature = float(value)
    except ValueError:
        temperature = math.nan
    if not 0.0 <= temperature <= 1.0:
        raise InvalidRequestError(
            f"Invalid value for temperature: {value!r}; expected a number from 0 to 1.",
            param="temperature",
        )


def _granularities(form: FormData) -> frozenset[str]:
    values: list[str] = []
    for name in _GRANULARITY_FIELDS:
        for value in form.getlist(name):
            if not isinstance(value, str):
                raise InvalidRequestError(
                    "timestamp_granularities must be text.", param="timestamp_granularities"
                )
            values.extend(v.strip() for v in value.split(",") if v.strip())
    unknown = sorted(set(values) - TIMESTAMP_GRANULARITIES)
    if unknown:
        raise InvalidRequestError(
            f"Unsupported timestamp_granularities {unknown!r}; allowed values: "
            f"{', '.join(sorted(TIMESTAMP_GRANULARITIES))}.",
            param="timestamp_granularities",
        )
    return frozenset(values) or frozenset({"segment"})


def _boolean(value: str | None, name: str) -> bool:
    if value is None:
        return False
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise InvalidRequestError(
        f"Invalid value for {name}: {value!r}; expected true or false.", param=name
    )
