"""The Realtime protocol's session settings and events, checked against the official
``openai`` SDK's own types (what its realtime client parses)."""

from __future__ import annotations

import base64
import json
import typing

import numpy as np
import pytest
from openai.types.realtime.realtime_server_event import RealtimeServerEvent

from serve_app.live.protocol import (
    ProtocolError,
    SessionSettings,
    error_event,
    parse_client_event,
    pcm16_samples,
    server_event,
)


def _sdk_classes() -> dict[str, type]:
    union = typing.get_args(RealtimeServerEvent)[0]  # Annotated[Union[...], ...]
    return {
        typing.get_args(c.model_fields["type"].annotation)[0]: c for c in typing.get_args(union)
    }


SDK_CLASSES = _sdk_classes()


def sdk_event(event: dict):
    """The event validated strictly by the SDK's own class for its type."""
    return SDK_CLASSES[event["type"]].model_validate(event)


def test_the_current_session_shape_sets_format_transcription_and_turn_detection():
    update = {
        "type": "session.update",
        "session": {
            "type": "transcription",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": {"model": "reverb", "language": "en", "verbatimicity": 0.25},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 700},
                    "noise_reduction": {"type": "near_field"},
                }
            },
            "include": ["item.input_audio_transcription.logprobs"],
        },
    }
    settings = SessionSettings().updated_by(update)
    assert settings.rate == 24000 and settings.transcription.verbatimicity == 0.25
    assert settings.endpoint_rules.silence_duration_ms == 700
    parsed = sdk_event(server_event("session.updated", session=settings.described()))
    assert parsed.type == "session.updated"
    assert parsed.session.audio.input.turn_detection.silence_duration_ms == 700
    # 16 kHz is a Reverb extension (OpenAI's type says 24000); it is reported as set.
    wideband = settings.updated_by(current({"format": {"type": "audio/pcm", "rate": 16000}}))
    assert wideband.rate == 16000 and wideband.transcription.verbatimicity == 0.25
    assert wideband.described()["audio"]["input"]["format"]["rate"] == 16000


def test_the_earlier_shape_and_turn_detection_null_mean_commit_only():
    update = {
        "type": "transcription_session.update",
        "session": {
            "input_audio_format": "pcm16",
            "input_audio_transcription": {
                "model": "gpt-4o-transcribe",
                "decoding_mode": "ctc_prefix_beam_search",
            },
            "turn_detection": None,
        },
    }
    settings = SessionSettings().updated_by(update)
    assert settings.shape == "earlier" and settings.rate == 24000
    assert settings.turn_detection is None and settings.endpoint_rules is None
    assert settings.transcription.decoding_mode == "ctc_prefix_beam_search"
    assert settings.described()["turn_detection"] is None


def current(audio_input: dict) -> dict:
    """A session.update of the current shape with this ``session.audio.input``."""
    session = {"type": "transcription", "audio": {"input": audio_input}}
    return {"type": "session.update", "session": session}


def test_an_update_changes_only_what_it_names():
    first = SessionSettings().updated_by(current({"transcription": {"verbatimicity": 0}}))
    second = first.updated_by(current({"turn_detection": None}))
    assert second.transcription.verbatimicity == 0 and second.turn_detection is None


IN = "session.audio.input."


@pytest.mark.parametrize(
    "update, param",
    [
        ({"type": "session.update", "session": {"type": "realtime"}}, "session.type"),
        (current({"format": {"type": "audio/pcmu"}}), IN + "format.type"),
        (current({"format": {"type": "audio/pcm", "rate": 8000}}), IN + "format.rate"),
        (current({"turn_detection": {"type": "semantic_vad"}}), IN + "turn_detection.type"),
        (current({"transcription": {"verbatimicity": 2}}), IN + "transcription.verbatimicity"),
        (current({"transcription": {"language": "fr"}}), "language"),
    ],
)
def test_what_reverb_cannot_honour_is_an_error_naming_the_field(update, param):
    with pytest.raises(ProtocolError) as caught:
        SessionSettings().updated_by(update)
    assert caught.value.param == param
    event = sdk_event(error_event(caught.value, "evt_1"))
    assert event.type == "error" and event.error.event_id == "evt_1"


@pytest.mark.parametrize(
    "text", ["not json", "[1]", '{"no": "type"}', '{"type": "response.create"}']
)
def test_bad_client_events_are_protocol_errors(text):
    with pytest.raises(ProtocolError):
        parse_client_event(text)


def test_appended_pcm16_is_decoded_and_bad_audio_refused():
    samples = (np.array([0, 16384, -32768, 32767])).astype("<i2")
    event = {
        "type": "input_audio_buffer.append",
        "audio": base64.b64encode(samples.tobytes()).decode(),
    }
    assert parse_client_event(json.dumps(event))["type"] == "input_audio_buffer.append"
    np.testing.assert_array_equal(pcm16_samples(event, 24000), [0, 0.5, -1, 32767 / 32768])
    for audio in ["***", base64.b64encode(b"odd").decode(), None]:
        with pytest.raises(ProtocolError):
            pcm16_samples({"type": "input_audio_buffer.append", "audio": audio}, 24000)
