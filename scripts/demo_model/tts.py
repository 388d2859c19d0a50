"""Speech synthesis with espeak-ng: the voices, one clip per (voice, word), trimming.

Every word is synthesised once per voice setting and trimmed of silence, so that
utterances can be built by concatenation with each word's true start and end known
(the manifest's exact word times come from here). espeak-ng is a system program the
recipe runs as a subprocess; it is not installed from Python (``make demo-model``
installs it), and ``require_espeak`` turns its absence into one clear line.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from serve_app.engine.features import SAMPLE_RATE

BASE_VOICES = ["en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us-nyc"]
TRAIN_VARIANTS = ["m1", "m3", "m4", "m5", "m6", "f1", "f2", "f4", "f5", "klatt", ""]
HELDOUT_VARIANTS = ["f3", "m7"]  # never used in training


@dataclass(frozen=True)
class Voice:
    """One espeak-ng setting; hashable, so that it keys the lexicon with the word."""

    voice: str
    variant: str
    speed: int
    pitch: int

    @property
    def name(self) -> str:
        """The ``-v`` argument: voice, plus ``+variant`` when there is one."""
        return self.voice + (f"+{self.variant}" if self.variant else "")

    def label(self) -> str:
        """The espeak-ng arguments as the manifest records them."""
        return f"{self.name} -s {self.speed} -p {self.pitch}"


Lexicon = dict[tuple[Voice, str], np.ndarray]
"""Trimmed 16 kHz float32 clip of each (voice, word)."""


def require_espeak() -> None:
    """Stop with one line when espeak-ng is missing, before any work is done."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit(
            "espeak-ng not found: install it (apt-get install -y espeak-ng; "
            "`make demo-model` does that) and run again"
        )


def espeak_word(word: str, voice: Voice) -> np.ndarray:
    """One word from espeak-ng, 16 kHz float32, silence trimmed."""
    wav = subprocess.run(
        [
            "espeak-ng",
            "-v",
            voice.name,
            "-s",
            str(voice.speed),
            "-p",
            str(voice.pitch),
            "--stdout",
            word,
        ],
        check=True,
        capture_output=True,
    ).stdout
    k = wav.find(b"data")
    pcm = np.frombuffer(wav[k + 8 :], dtype="<i2")[: (len(wav) - k - 8) // 2]
    rate = int.from_bytes(wav[24:28], "little")
    audio = torch.from_numpy(pcm.astype(np.float32) / 32768.0)
    import torchaudio

    audio = torchaudio.functional.resample(audio, rate, SAMPLE_RATE).numpy()
    return trim_silence(audio)


def trim_silence(audio: np.ndarray, rel_db: float = -35.0, frame: int = 160) -> np.ndarray:
    """Cut leading/trailing 10 ms frames whose RMS is more than ``rel_db`` below the peak."""
    n = len(audio) // frame
    if n == 0:
        return audio
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(rms > rms.max() * 10 ** (rel_db / 20))[0]
    return audio[loud[0] * frame : (loud[-1] + 1) * frame].copy()


def synthesise_lexicon(voices: list[Voice], words: list[str], jobs: int = 2) -> Lexicon:
    """{(voice, word): clip} for every pair, synthesised in parallel subprocesses."""
    pairs = [(v, w) for v in voices for w in words]
    with ThreadPoolExecutor(jobs) as pool:
        clips = list(pool.map(lambda p: espeak_word(p[1], p[0]), pairs))
    return dict(zip(pairs, clips, strict=True))


@dataclass(frozen=True)
class VoicePool:
    """The accents and variants training voices are drawn from; the test manifest
    records them, so tests can replay the plan and check the held-out voices' novelty."""

    accents: tuple[str, ...] = tuple(BASE_VOICES)
    variants: tuple[str, ...] = tuple(TRAIN_VARIANTS)


def train_voices(rng: random.Random, n: int, pool: VoicePool) -> list[Voice]:
    """``n`` training settings cycling through the pool's accents and variants, with
    seeded speed and pitch (two draws per voice, in order: the first voices do not
    depend on ``n``)."""
    accents, variants = pool.accents, pool.variants
    return [
        Voice(
            accents[k % len(accents)],
            variants[(k * 7 + k // len(accents)) % len(variants)],
            rng.randint(120, 250),
            rng.randint(15, 85),
        )
        for k in range(n)
    ]


def heldout_voices() -> list[Voice]:
    """Two unseen variants plus two seen variants at unseen speed/pitch settings."""
    return [
        Voice("en-us", "f3", 165, 55),
        Voice("en-gb-x-rp", "m7", 180, 40),
        Voice("en", "m3", 190, 62),
        Voice("en-us", "f2", 150, 35),
    ]


def hard_voices() -> list[Voice]:
    """Fast speech in unseen variants (plus heavy noise when assembled)."""
    return [Voice("en-us", "f3", 290, 60), Voice("en-gb-scotland", "m7", 300, 45)]


def continuous_voices() -> list[Voice]:
    """Voices of the continuous held-out sets, none ever trained on: variants training
    never used (f3, m2, m7, klatt2), two of them on accents it never used (Lancaster,
    West Midlands), and one at espeak-ng's defaults (-s 175 -p 50), the way
    ``espeak-ng -v VOICE "..."`` speaks."""
    return [
        Voice("en-us", "f3", 175, 50),
        Voice("en-gb-x-gbclan", "m2", 160, 45),
        Voice("en-gb-x-gbcwmd", "m7", 190, 60),
        Voice("en-029", "klatt2", 150, 40),
    ]
