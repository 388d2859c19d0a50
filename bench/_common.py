"""Shared helpers for the benchmarks: synthetic audio, the clip-length mix, a machine line.

The benchmark scripts are run as files (``python bench/engine_sweep.py``), so this
module is imported by its bare name from the script's own folder.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000


@functools.cache
def model_script():
    """scripts/make_test_model.py as a module (``make_model``, ``speechlike_audio``)."""
    name = "make_test_model"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def speech(seconds: float, seed: int) -> np.ndarray:
    """Speech-like 16 kHz float audio that the random test models turn into words."""
    return model_script().speechlike_audio(seconds, seed=seed)


def wav_bytes(audio: np.ndarray) -> bytes:
    """16-bit mono PCM WAV of float audio in [-1, 1] (the engine's own encoder)."""
    from serve_app.engine.audio import encode_wav

    return encode_wav(audio, SAMPLE_RATE)


def mix_lengths(n: int, seed: int = 0, low: float = 2.0, high: float = 60.0) -> list[float]:
    """``n`` clip lengths in seconds, log-uniform in [low, high] (many short, some long),
    rounded to 0.1 s. Arrival order is the order returned."""
    rng = np.random.default_rng(seed)
    values = np.exp(rng.uniform(np.log(low), np.log(high), size=n))
    return [round(float(v), 1) for v in values]


def machine() -> str:
    """One line describing where the numbers came from."""
    import torch

    cpus = os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.machine()}, {cpus} CPU cores, {gpu}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def md_table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
