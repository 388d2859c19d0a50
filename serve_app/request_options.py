"""What a caller may ask for, validated the same way for HTTP and the Serve handle.

The options are pydantic fields (:class:`DecodeOptions` plus ``language``), so the
form model the HTTP layer parses and the keyword arguments a handle caller passes
accept and refuse exactly the same values. A validation failure becomes one
OpenAI-style 400 naming the first field at fault, whichever entry point it came in by.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationError

from serve_app.engine.options import DecodeOptions
from serve_app.wire import InvalidRequestError, MissingParameterError

_DECODE_FIELDS = frozenset(DecodeOptions.model_fields)


def english_only(language: str | None) -> str | None:
    """Reverb is an English model; refuse other languages rather than return nonsense."""
    if language is None or not language.strip():
        return None
    tag = language.strip().lower()
    if tag in ("en", "english") or tag.startswith(("en-", "en_")):
        return tag
    raise ValueError(f"unsupported language {language!r}: this model transcribes English only")


Language = Annotated[
    str | None,
    AfterValidator(english_only),
    Field(
        description="The audio's language: English only ('en', 'en-US', ...).",
        # What english_only accepts, said in the schema so that clients and schema
        # fuzzers know it (JSON Schema patterns have no case-insensitive flag).
        json_schema_extra={
            "pattern": r"^\s*(?:[Ee][Nn](?:[-_].*)?|[Ee][Nn][Gg][Ll][Ii][Ss][Hh])?\s*$"
        },
    ),
]


class RequestOptions(DecodeOptions):
    """Reverb's decoding options plus the language, as every entry point takes them."""

    language: Language = None

    def decode_options(self) -> DecodeOptions:
        """Just the decoding options, as each chunk job carries them."""
        return DecodeOptions.model_validate(self.model_dump(include=_DECODE_FIELDS))


def parse_request_options(values: Mapping[str, Any]) -> DecodeOptions:
    """Validate a handle caller's keyword options; the first problem becomes a 400."""
    try:
        return RequestOptions.model_validate(dict(values)).decode_options()
    except ValidationError as exc:
        raise request_error(exc.errors(include_url=False)) from None


def request_error(errors: Sequence[Mapping[str, Any]]) -> InvalidRequestError:
    """The first of pydantic's (or FastAPI's) validation errors as an OpenAI-style 400.

    ``loc`` may start with FastAPI's ``"body"``; list fields sent with the SDK's
    ``[]`` suffix are named without it, as OpenAI names them.
    """
    first = errors[0]
    names = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    param = names[0].removesuffix("[]") if names else None
    kind = first.get("type")
    if kind == "extra_forbidden":
        return InvalidRequestError(f"Unrecognized request argument supplied: {param}.", param=param)
    if kind == "missing":
        return MissingParameterError(f"You must provide '{param}'.", param=param)
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return InvalidRequestError(f"Invalid value for {param}: {message}.", param=param)
