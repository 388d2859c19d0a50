"""Hostile audio: a fuzz corpus made from real files of every supported format.

Each mutation (truncations, header bit flips, lying sizes, absurd rates and channel
counts, NaN samples, nested and concatenated containers) is decoded in a separate
interpreter, so a crash inside FFmpeg shows up as a dead worker instead of killing
the test run. Pass criterion: no crash, and every file is either decoded to finite
16 kHz mono samples in [-1, 1] (a truncated mp3 is still audio) or refused with one
of the typed 4xx errors; never another exception, never a 5xx.
"""

from __future__ import annotations

import json
import pickle
import random
import struct
import subprocess
import sys

import numpy as np
import pytest

from tests.audio_files import FORMATS, encode_channels, require_encoder, tone

SEED = 20261201
CUTS = (1, 4, 12, 44, 100, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 0.99)
FLIPS_PER_FILE = 12

# The worker decodes pickled (name, bytes) pairs and prints one JSON line per file
# *before* moving on, so the parent knows which file a crash happened in.
WORKER = r"""
import json, pickle, sys
import numpy as np
from serve_app.engine.audio import decode_audio
from serve_app.wire import ReverbServeError
for name, data in pickle.load(sys.stdin.buffer):
    print(json.dumps({"start": name}), flush=True)
    try:
        wave = decode_audio(data, max_seconds=30)
        ok = bool(wave.ndim == 1 and np.isfinite(wave).all() and np.abs(wave).max() <= 1.0)
        outcome = {"name": name, "status": 200 if ok else "bad waveform"}
    except ReverbServeError as exc:
        outcome = {"name": name, "status": exc.status_code, "code": exc.code}
    except BaseException as exc:
        outcome = {"name": name, "status": "raised " + type(exc).__name__ + ": " + str(exc)[:200]}
    print(json.dumps(outcome), flush=True)
"""


def _wav(
    payload: bytes,
    *,
    rate: int,
    channels: int,
    bits: int,
    tag: int = 1,
    riff: int | None = None,
    data: int | None = None,
) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(payload) if data is None else data) + payload
    return b"RIFF" + struct.pack("<I", len(body) if riff is None else riff) + body


def _base_files() -> dict[str, bytes]:
    files = {}
    for name, (container, codec, rate, _) in FORMATS.items():
        require_encoder(codec)
        files[name] = encode_channels(tone(1.0, rate), rate, container, codec)
    return files


def _header_attacks(files: dict[str, bytes]) -> dict[str, bytes]:
    pcm = (tone(0.5, 16000) * 32767).astype("<i2").tobytes()
    nan = np.full(8000, np.nan, dtype="<f4").tobytes()
    return {
        "wav_zero_rate": _wav(pcm, rate=0, channels=1, bits=16),
        "wav_255_channels": _wav(pcm[: len(pcm) // 510 * 510], rate=16000, channels=255, bits=16),
        "wav_768khz": _wav(pcm, rate=768_000, channels=1, bits=16),
        "wav_769khz": _wav(pcm, rate=769_000, channels=1, bits=16),
        "wav_1hz": _wav(pcm, rate=1, channels=1, bits=16),
        "wav_nan_floats": _wav(nan, rate=16000, channels=1, bits=32, tag=3),
        "wav_data_size_lies_huge": _wav(pcm, rate=16000, channels=1, bits=16, data=0xFFFFFFF0),
        "wav_riff_size_lies_small": _wav(pcm, rate=16000, channels=1, bits=16, riff=4),
        "wav_zero_bits": _wav(pcm, rate=16000, channels=1, bits=0),
        "wav_wrapping_mp3": _wav(files["mp3"], rate=44100, channels=1, bits=0, tag=0x55),
        "wav_then_ogg": files["wav_s16"] + files["ogg_opus"],
        "ogg_then_wav": files["ogg_opus"] + files["wav_s16"],
        "mp3_twice": files["mp3"] + files["mp3"],
        "zeros": bytes(4096),
        "riff_only": b"RIFF",
    }


def corpus() -> dict[str, bytes]:
    rng = random.Random(SEED)
    files = _base_files()
    out = dict(_header_attacks(files))
    for name, data in files.items():
        for cut in CUTS:
            at = cut if isinstance(cut, int) else int(len(data) * cut)
            out[f"{name}_cut_{at}"] = data[:at]
        for k in range(FLIPS_PER_FILE):
            flipped = bytearray(data)
            pos = rng.randrange(min(len(data), 256))
            flipped[pos] ^= 1 << rng.randrange(8)
            out[f"{name}_flip_{k}_at_{pos}"] = bytes(flipped)
    return out


@pytest.fixture(scope="module")
def outcomes() -> dict[str, dict]:
    items = list(corpus().items())
    done: dict[str, dict] = {}
    while items:
        proc = subprocess.run(
            [sys.executable, "-c", WORKER],
            input=pickle.dumps(items),
            capture_output=True,
            timeout=240,
        )
        started = None
        for line in proc.stdout.decode().splitlines():
            record = json.loads(line)
            if "start" in record:
                started = record["start"]
            else:
                done[record["name"]] = record
                started = None
        if proc.returncode == 0:
            break
        # The worker died inside FFmpeg: record the crash, go on after that file.
        assert started is not None, proc.stderr.decode()[-2000:]
        done[started] = {"name": started, "status": f"crashed (exit {proc.returncode})"}
        names = [n for n, _ in items]
        items = items[names.index(started) + 1 :]
    return done


def test_the_corpus_covers_every_format_and_attack():
    names = corpus().keys()
    for fmt in FORMATS:
        assert sum(n.startswith(f"{fmt}_cut_") for n in names) == len(CUTS)
        assert sum(n.startswith(f"{fmt}_flip_") for n in names) == FLIPS_PER_FILE
    assert len(names) > 250


def test_no_crash_and_only_audio_or_typed_4xx(outcomes):
    assert len(outcomes) == len(corpus())
    bad = {
        n: o for n, o in outcomes.items() if not (o["status"] == 200 or 400 <= o["status"] < 500)
    }
    assert not bad, bad


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("wav_zero_rate", 415),
        ("wav_255_channels", 415),  # FFmpeg refuses the layout: a clean 415, no crash
        ("wav_769khz", 415),
        ("wav_1hz", 413),  # 8000 s declared: over the limit before decoding
        ("wav_nan_floats", 415),
        ("zeros", 415),
        ("riff_only", 415),
    ],
)
def test_named_attacks_get_the_expected_answer(outcomes, name, status):
    assert outcomes[name]["status"] == status, outcomes[name]


def test_the_outcomes_are_not_all_the_same(outcomes):
    """A decoder that refused everything would pass the criterion above; this one
    must still decode most truncated and many bit-flipped real files."""
    statuses = [o["status"] for o in outcomes.values()]
    assert statuses.count(200) > len(statuses) // 3
    assert sum(s == 415 for s in statuses) > 20
