"""schemathesis against the generated ``/openapi.json``, every check, with and without
an API key: responses must match what the schema documents (status codes, media
types, bodies), valid requests must be accepted, and nothing may be a 5xx.

The app is the real FastAPI app and request pipeline with a local chunk decoder (the
model is not what is under test here). Generated ``file`` parts are replaced by real
WAV files, since random bytes are not audio and would rightly be refused with 415.

One exclusion, on the transcription form only: ``negative_data_rejection``. A
multipart form carries only strings, so a value schemathesis means as the wrong JSON
type (the number 0 for a string list such as ``include[]``) arrives as the text "0",
which is a valid value; the check cannot tell the two apart for form fields.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import negative_data_rejection

from serve_app.serve.http_api import create_http_app
from tests.fake_backend import FakeBackend, chunks_audio

KEY = "fuzz-key"
AUDIO = [chunks_audio(1), chunks_audio(2)]
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))


def _schema(**config):
    backend = FakeBackend(**config)
    headers = {"Authorization": f"Bearer {KEY}"} if "api_key" in config else {}
    app = create_http_app(lambda: backend)
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers)


open_app = _schema()
keyed_app = _schema(api_key=KEY)


def _validate(case, headers: dict[str, str] | None = None) -> None:
    excluded = []
    if isinstance(case.body, dict) and "file" in case.body:
        case.body["file"] = AUDIO[len(case.body) % 2]
        excluded = [negative_data_rejection]
    case.call_and_validate(headers=headers, excluded_checks=excluded)


@open_app.parametrize()
@SETTINGS
def test_every_operation_conforms_without_a_key(case):
    _validate(case)


@keyed_app.parametrize()
@SETTINGS
def test_every_operation_conforms_with_the_key(case):
    _validate(case, headers={"Authorization": f"Bearer {KEY}"})
