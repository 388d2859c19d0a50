"""The held-out test clips (tests/data/demo) and their manifest.

The clips use sentences and voice variants that training never saw, and the manifest
records every word's exact start and end (the clips are concatenations of trimmed
word clips), so tests/test_demo_model.py can measure WER and word timings against the
truth. The texts and times are a function of the seed alone: a rebuild writes a
byte-identical manifest.json.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from scripts.demo_model.corpus import HELDOUT_COUNT, disfluent
from scripts.demo_model.data import Utterance, assemble, assemble_continuous
from scripts.demo_model.speech import speak
from scripts.demo_model.tts import Lexicon, continuous_voices, hard_voices, heldout_voices
from serve_app.engine.features import SAMPLE_RATE

DESCRIPTION = (
    "Held-out clips for the demo model: sentences and voice variants unseen in "
    "training; word times are exact (concatenated, trimmed word clips; for the "
    "continuous sets, espeak-ng's own word events). Built by "
    "scripts/demo_model (python -m scripts.demo_model test-data); see models/demo/README.md."
)


def encode_opus(audio: np.ndarray, kbps: int = 32) -> bytes:
    """16 kHz mono Ogg/Opus via PyAV (about 4 kB per second: the test set stays small)."""
    import av

    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=SAMPLE_RATE, layout="mono")
        stream.bit_rate = kbps * 1000
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def entry(name: str, utt: Utterance, kind: str) -> dict[str, Any]:
    """One clip's manifest entry (times to 0.1 ms, far finer than any test's tolerance)."""
    return {
        "file": f"{name}.opus",
        "set": kind,
        "voice": utt.voice.label(),
        "text": " ".join(utt.verbatim),
        "text_nonverbatim": " ".join(utt.nonverbatim),
        "words": [
            {"word": w, "start": round(s, 4), "end": round(e, 4)}
            for w, (s, e) in zip(utt.verbatim, utt.times, strict=True)
        ],
        "duration": round(len(utt.audio) / SAMPLE_RATE, 4),
        **{k: round(v, 2) for k, v in utt.meta.items()},
    }


def write_test_data(
    out: Path, utts: dict[str, tuple[Utterance, str]], recipe: dict[str, Any]
) -> dict[str, Any]:
    """Replace ``out`` with the clips of ``utts`` and their manifest.json."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    manifest = {
        "description": DESCRIPTION,
        "sample_rate": SAMPLE_RATE,
        "recipe": recipe,
        "clips": [],
    }
    for name, (utt, kind) in utts.items():
        (out / f"{name}.opus").write_bytes(encode_opus(utt.audio))
        manifest["clips"].append(entry(name, utt, kind))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def build_test_data(
    out: Path, sentences: list[list[str]], lexicon: Lexicon, recipe: dict[str, Any]
) -> dict[str, Any]:
    """Held-out clips, a hard set (fast + noisy), a ~2-minute long-form clip, and the
    continuous held-out sets (``continuous_clips``)."""
    seed = recipe["seed"]
    rng = random.Random(seed + 2)
    nrng = np.random.default_rng(seed + 2)
    held_v, hard_v = heldout_voices(), hard_voices()
    utts: dict[str, tuple[Utterance, str]] = {}
    for k, s in enumerate(sentences[:24]):
        v = disfluent(s, rng, p_filler=1.0, p_repeat=0.25) if k % 2 else list(s)
        utts[f"heldout_{k:02d}"] = (assemble(v, s, held_v[k % 4], lexicon, nrng), "heldout")
    for k, s in enumerate(sentences[24:34]):
        u = assemble(s, s, hard_v[k % 2], lexicon, nrng, gap=(0.0, 0.06), snr_db=(-2.0, 4.0))
        utts[f"hard_{k:02d}"] = (u, "hard")
    # Long form: ~2 minutes of sentences from one unseen variant, with pauses between them.
    words: list[str] = []
    clean: list[str] = []
    for s in sentences[34:HELDOUT_COUNT]:
        if sum(len(lexicon[(held_v[0], w)]) for w in words) / SAMPLE_RATE > 80:
            break
        words += s
        clean += s
    long_utt = assemble(words, clean, held_v[0], lexicon, nrng, gap=(0.1, 0.45))
    utts["long_form"] = (long_utt, "long")
    utts.update(continuous_clips(sentences[HELDOUT_COUNT:], lexicon, seed))
    return write_test_data(out, utts, recipe)


def continuous_clips(
    sentences: list[list[str]], lexicon: Lexicon, seed: int
) -> dict[str, tuple[Utterance, str]]:
    """Continuous held-out speech: 24 sentences and one ~2-minute text, each spoken in
    one go by espeak-ng in voices never trained on, word times from its word events.

    Drawn from their own seeded streams after the word-joined clips, so those keep
    their bytes. Every other clip gets one or two fillers (no repeated words: espeak-ng
    reads "to to" as one word event, and such a clip would fall back to word-joined).
    """
    rng = random.Random(seed + 6)
    nrng = np.random.default_rng(seed + 6)
    voices = continuous_voices()
    utts: dict[str, tuple[Utterance, str]] = {}
    for k, s in enumerate(sentences[:24]):
        v = disfluent(s, rng, p_filler=1.0, p_repeat=0.0) if k % 2 else list(s)
        u = assemble_continuous([v], s, voices[k % len(voices)], lexicon, nrng)
        utts[f"continuous_{k:02d}"] = (u, "continuous")
    # The long clip is one text read in one go, as `espeak-ng -v VOICE "<text>"` reads
    # a long paragraph: espeak-ng's own short pauses at the full stops, nothing added.
    chosen: list[list[str]] = []
    for s in sentences[24:]:
        chosen.append(s)
        if len(speak(chosen, voices[0]).audio) / SAMPLE_RATE >= 115:
            break
    clean = [w for s in chosen for w in s]
    u = assemble_continuous(chosen, clean, voices[0], lexicon, nrng)
    utts["continuous_long"] = (u, "continuous_long")
    return utts
