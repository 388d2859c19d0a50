"""Shared fixtures: the tiny random Reverb model and synthetic audio.

The tiny model is built once per test session by ``scripts.make_test_model`` (a few
seconds, fixed seed), so no test downloads weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from scripts import make_test_model as _make_test_model


@pytest.fixture(scope="session")
def make_test_model():
    """The model-making script as a module (``make_model(size, out)``)."""
    return _make_test_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, make_test_model) -> Path:
    return make_test_model.make_model("tiny", tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from serve_app.engine.model import load_model

    return load_model(str(tiny_model_dir), device="cpu")


def synth_audio(seconds: float, seed: int = 0, sample_rate: int = 16000) -> np.ndarray:
    """Speech-like synthetic audio the tiny random model turns into varied transcripts."""
    return _make_test_model.speechlike_audio(seconds, seed, sample_rate)


def wav_bytes(audio: np.ndarray, sample_rate: int = 16000) -> bytes:
    """16-bit PCM WAV of float audio in [-1, 1]."""
    from serve_app.engine.audio import encode_wav

    return encode_wav(audio, sample_rate)


@pytest.fixture(scope="session")
def synth():
    return synth_audio


@pytest.fixture(scope="session")
def to_wav():
    return wav_bytes
