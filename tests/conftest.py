"""Shared fixtures: the tiny random Reverb model and synthetic audio.

The tiny model is built once per test session from scripts/make_test_model.py (a few
seconds, fixed seed), so no test downloads weights.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_test_model():
    """The model-making script as a module (``make_model(size, out)``)."""
    return _load_script("make_test_model")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, make_test_model) -> Path:
    return make_test_model.make_model("tiny", tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from serve_app.engine.model import load_model

    return load_model(str(tiny_model_dir), device="cpu")


def synth_audio(seconds: float, seed: int = 0, sample_rate: int = 16000) -> np.ndarray:
    """Speech-like synthetic audio the tiny random model turns into varied transcripts."""
    return _load_script("make_test_model").speechlike_audio(seconds, seed, sample_rate)


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
