"""The live-server attack runner (``python -m bench.attack live``), aimed at a real
HTTP server on 127.0.0.1: uvicorn serving the real FastAPI app and request pipeline,
with a key and a CORS origin, and a stand-in for the model (the attacks target the
edge and the decoder, not the model). The Serve deployment gets the same run from the
bench command; this keeps every attack in ``make test``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.attack_http import ATTACKS, Target, run_all
from serve_app.serve.http_api import create_http_app
from tests.fake_backend import FakeBackend
from tests.local_server import serving

KEY = "attack-runner-key-0123456789"
ORIGIN = "http://allowed.example"


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    backend = FakeBackend(
        api_key=KEY,
        cors_origins=[ORIGIN],
        max_audio_seconds=60,
        body_grace_s=1.0,
        model_aliases=["whisper-1"],
    )
    with serving(create_http_app(lambda: backend)) as port:
        yield Target(f"http://127.0.0.1:{port}", KEY, ORIGIN, 60, 1.0)


@pytest.mark.parametrize("attack", [name for name in ATTACKS if name != "still-serving"])
def test_attack_fails_and_the_server_keeps_serving(target, attack):
    """Pass: every outcome of the attack meets its criterion (playlists 415 with the
    canary unopened; Ray headers 400; traversal 404; auth 401 + WWW-Authenticate; CORS
    only for the allowed origin, errors included; trickling bodies 408 while a normal
    upload gets 200; oversize 413 at once; malformed files typed 4xx), and afterwards
    health is 200 and a clip is transcribed."""
    outcomes = run_all(target, [attack])
    failed = [o for o in outcomes if not o.passed]
    assert not failed, "\n".join(f"{o.attack}: {o.criterion}; got {o.detail}" for o in failed)
    assert len(outcomes) >= 2
