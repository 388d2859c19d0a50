"""A hand-written OpenAPI 3.1 description of the HTTP API, served at /openapi.json.

Written by hand because the app is plain Starlette (no FastAPI schema generation)
and because the multipart contract is what matters to clients: the OpenAI fields,
the Reverb extensions and the error shape. The option schemas come from
``DecodeOptions`` itself, so its ranges and defaults cannot drift from the docs.
"""

from __future__ import annotations

from typing import Any

from serve_app.engine.formats import RESPONSE_FORMATS
from serve_app.engine.options import DecodeOptions
from serve_app.serve.config import AppConfig

_JSON = "application/json"


def _error_ref(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _option_properties() -> dict[str, Any]:
    """Reverb extension fields as multipart properties, from DecodeOptions' JSON schema."""
    schema = DecodeOptions.model_json_schema()
    properties: dict[str, Any] = {}
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        prop.pop("title", None)
        prop.setdefault("description", f"Reverb extension: {name.replace('_', ' ')}.")
        properties[name] = prop
    return properties


def openapi_schema(config: AppConfig) -> dict[str, Any]:
    """The document for one app; model ids and limits come from its config."""
    security: list[dict[str, list[str]]] = [{"bearer": []}] if _auth_on(config) else []
    transcription_form = {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {
                "type": "string",
                "format": "binary",
                "description": "Audio: wav, flac, mp3, ogg/opus, webm/opus or m4a/aac; at "
                f"most {config.max_upload_bytes} bytes and {config.max_audio_seconds:g} s.",
            },
            "model": {"type": "string", "enum": config.accepted_model_ids},
            "language": {"type": "string", "description": "Only 'en' is accepted."},
            "prompt": {"type": "string", "description": "Accepted and ignored."},
            "response_format": {
                "type": "string",
                "enum": list(RESPONSE_FORMATS),
                "default": "json",
            },
            "timestamp_granularities[]": {
                "type": "array",
                "items": {"type": "string", "enum": ["word", "segment"]},
            },
            "temperature": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": "Accepted and ignored: decoding is deterministic.",
            },
            "stream": {
                "type": "boolean",
                "default": False,
                "description": "Server-sent events: transcript.text.delta per chunk, in "
                "order, then transcript.text.done.",
            },
            **_option_properties(),
        },
    }
    text_body = {"schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "reverb-serve",
            "version": "0.1.0",
            "description": "Rev's Reverb ASR behind an OpenAI-compatible transcription API.",
        },
        "paths": {
            "/v1/audio/transcriptions": {
                "post": {
                    "operationId": "createTranscription",
                    "summary": "Transcribe an audio file.",
                    "security": security,
                    "requestBody": {
                        "required": True,
                        "content": {"multipart/form-data": {"schema": transcription_form}},
                    },
                    "responses": {
                        "200": {
                            "description": "The transcript in the requested format.",
                            "content": {
                                _JSON: {"schema": {"$ref": "#/components/schemas/Transcription"}},
                                "text/plain": text_body,
                                "text/vtt": text_body,
                                "text/event-stream": text_body,
                            },
                        },
                        "400": _error_ref("A bad option or a missing file."),
                        "401": _error_ref("Missing or wrong API key."),
                        "413": _error_ref("Upload or audio over the limit."),
                        "415": _error_ref("The file is not decodable audio."),
                        "503": _error_ref(
                            "Overloaded or the model is unavailable; see Retry-After."
                        ),
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "security": security,
                    "responses": {"200": {"description": "Served model ids and aliases."}},
                }
            },
            "/v1/models/{model_id}": {
                "get": {
                    "operationId": "retrieveModel",
                    "security": security,
                    "parameters": [
                        {
                            "name": "model_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "The model."},
                        "404": _error_ref("Unknown model id."),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "security": [],
                    "responses": {"200": {"description": "The process is alive."}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "security": [],
                    "responses": {
                        "200": {"description": "A model replica is loaded and answering."},
                        "503": _error_ref("No model replica is ready."),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "security": [],
                    "responses": {"200": {"description": "This document."}},
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["message", "type", "param", "code"],
                            "properties": {
                                "message": {"type": "string"},
                                "type": {"type": "string"},
                                "param": {"type": ["string", "null"]},
                                "code": {"type": ["string", "null"]},
                            },
                        }
                    },
                },
                "Transcription": {
                    "type": "object",
                    "required": ["text"],
                    "properties": {
                        "text": {"type": "string"},
                        "task": {"type": "string"},
                        "language": {"type": "string"},
                        "duration": {"type": "number"},
                        "segments": {"type": "array", "items": {"type": "object"}},
                        "words": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "word": {"type": "string"},
                                    "start": {"type": "number"},
                                    "end": {"type": "number"},
                                    "confidence": {"type": "number"},
                                },
                            },
                        },
                    },
                },
            },
        },
    }


def _auth_on(config: AppConfig) -> bool:
    return config.api_key is not None or config.api_key_env is not None
