"""The Python handle API returns exactly what HTTP returns.

Three callers of the same ``Ingress.transcribe``: a driver holding the app handle, a
second Serve deployment (``tests/serve/handle_caller.py``) holding it inside a
replica, and HTTP. All decode the same audio alone, so results must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest
from serve_helpers import CALLER_APP, MAIN_APP, assert_same_words, verbose_transcript, wav_bytes

pytestmark = pytest.mark.serve

OPTIONS = {"decoding_mode": "ctc_prefix_beam_search", "verbatimicity": 0.7}


@pytest.fixture(scope="module")
def samples(speech) -> np.ndarray:
    """Audio already on the int16 grid, so the WAV and the float array are the same
    waveform once decoded."""
    pcm = np.clip(np.round(speech(7.0, 50) * 32768.0), -32768, 32767).astype(np.int16)
    return pcm.astype(np.float32) / 32768.0


@pytest.fixture(scope="module")
def over_http(serve_cluster, samples) -> dict:
    return verbose_transcript(serve_cluster.base_url, wav_bytes(samples), **OPTIONS)


def _assert_matches_http(transcript: dict, http_body: dict) -> None:
    assert transcript["text"] == http_body["text"]
    assert transcript["duration"] == pytest.approx(http_body["duration"])
    assert transcript["decoding_mode"] == OPTIONS["decoding_mode"]
    assert transcript["verbatimicity"] == OPTIONS["verbatimicity"]
    assert_same_words(transcript["words"], http_body["words"])
    assert [s["text"] for s in transcript["segments"]] == [s["text"] for s in http_body["segments"]]


def test_driver_handle_with_bytes_matches_http(serve_cluster, samples, over_http):
    from ray import serve

    from serve_app.wire import Transcript

    handle = serve.get_app_handle(MAIN_APP)
    transcript = handle.transcribe.remote(wav_bytes(samples), **OPTIONS).result(timeout_s=120)
    assert isinstance(transcript, Transcript)
    _assert_matches_http(transcript.model_dump(), over_http)


def test_driver_handle_with_a_numpy_array_matches_http(serve_cluster, samples, over_http):
    from ray import serve

    handle = serve.get_app_handle(MAIN_APP)
    transcript = handle.transcribe.remote(samples, **OPTIONS).result(timeout_s=120)
    _assert_matches_http(transcript.model_dump(), over_http)


def test_another_deployment_through_a_handle_matches_http(serve_cluster, samples, over_http):
    from ray import serve

    caller = serve.get_deployment_handle("HandleCaller", app_name=CALLER_APP)
    transcript = caller.transcribe.remote(wav_bytes(samples), OPTIONS).result(timeout_s=120)
    _assert_matches_http(transcript, over_http)


def test_handle_errors_are_the_typed_engine_errors(serve_cluster, samples):
    from ray import serve

    from serve_app.wire import AudioDecodeError, InvalidRequestError

    handle = serve.get_app_handle(MAIN_APP)
    with pytest.raises(InvalidRequestError) as info:
        handle.transcribe.remote(samples, verbatimicity=3).result(timeout_s=60)
    assert info.value.param == "verbatimicity"
    with pytest.raises(InvalidRequestError) as info:
        handle.transcribe.remote(samples, language="fr").result(timeout_s=60)
    assert info.value.param == "language"
    with pytest.raises(AudioDecodeError) as info:
        handle.transcribe.remote(b"not audio at all" * 10).result(timeout_s=60)
    assert info.value.status_code == 415
