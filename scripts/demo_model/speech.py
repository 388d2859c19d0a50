"""Continuous speech from espeak-ng's C library, with word times from espeak-ng itself.

The word-joined utterances of ``data`` are each word synthesised alone and trimmed: no
coarticulation, a gap between every two words. A model trained only on those learnt
the joins, not speech (86% WER on whole sentences spoken by espeak-ng in one go). Here
espeak-ng speaks whole sentences and multi-sentence texts, and its synthesis callback
reports a word event with the sample position of every word start, so the labels and
the test manifest still have true word times without a forced aligner.

``libespeak-ng.so.1`` is loaded with ctypes (no new dependency; the ``espeak-ng``
program the recipe already requires ships with it). Its state is global, so one
process synthesises one text at a time; the lock makes that safe from threads, and
ctypes releases the GIL while espeak-ng works, so synthesis in the prefetch thread runs
beside training.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scripts.demo_model.tts import Voice
from serve_app.engine.features import SAMPLE_RATE

AUDIO_OUTPUT_SYNCHRONOUS = 2
EVENT_WORD = 1
EVENT_LIST_TERMINATED = 0
ESPEAK_RATE, ESPEAK_PITCH = 1, 3
CHARS_UTF8 = 1
PHONEME_INPUT = 0x100  # espeakPHONEMES: [[...]] in the text is read as phonemes
POS_CHARACTER = 1

# Vowels fillers are commonly said with besides the accent's own STRUT vowel (what
# espeak-ng gives for the spelling): schwa ("uh" as [ə]) and the British "er"/"erm"
# ([ɜː], [ɜːm]), written as espeak-ng phonemes.
FILLER_SOUNDS = {"uh": ("[[@]]", "[['3:]]"), "um": ("[[@m]]", "[['3:m]]")}


class EspeakEvent(ctypes.Structure):
    """``espeak_EVENT`` of speak_lib.h (the id union is pointer-sized)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_void_p),
    ]


SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(EspeakEvent)
)


@dataclass
class Spoken:
    """One synthesised text at 16 kHz: audio, its words and each word's (start, end)."""

    audio: np.ndarray
    words: list[str]
    times: list[tuple[float, float]]


class Espeak:
    """The espeak-ng library in synchronous mode: samples and word events by callback."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        self.lib = ctypes.CDLL(name)
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, None, 0)
        if self.rate <= 0:
            raise RuntimeError("espeak_Initialize failed")
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int]] = []  # (sample, text position, length)
        self._callback = SYNTH_CALLBACK(self._receive)  # kept alive with the object
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()

    def _receive(self, wav: Any, numsamples: int, events: Any) -> int:
        """espeak-ng's synth callback: keep the samples and the word events; 0 goes on."""
        if numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        k = 0
        while events[k].type != EVENT_LIST_TERMINATED:
            e = events[k]
            if e.type == EVENT_WORD:
                self._events.append((e.sample, e.text_position, e.length))
            k += 1
        return 0

    def synth(self, text: str, voice: Voice) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """int16 samples at ``self.rate`` and the word events of one text."""
        data = text.encode() + b"\0"
        # Phoneme input only where the text has some: the flag changes a few samples
        # of plain text too, and plain texts must synthesise as they always have.
        flags = CHARS_UTF8 | (PHONEME_INPUT if "[[" in text else 0)
        with self.lock:
            self._chunks, self._events = [], []
            if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise RuntimeError(f"espeak-ng has no voice {voice.name}")
            self.lib.espeak_SetParameter(ESPEAK_RATE, voice.speed, 0)
            self.lib.espeak_SetParameter(ESPEAK_PITCH, voice.pitch, 0)
            self.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, flags, None, None)
            self.lib.espeak_Synchronize()
            chunks, events = self._chunks, self._events
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return pcm, events


_ESPEAK: Espeak | None = None
_INIT = threading.Lock()


def espeak() -> Espeak:
    """The process's one library handle (espeak-ng's state is global)."""
    global _ESPEAK
    with _INIT:
        if _ESPEAK is None:
            _ESPEAK = Espeak()
    return _ESPEAK


@functools.cache
def resampler(rate: int) -> torch.nn.Module:
    """espeak-ng's rate to 16 kHz, the sinc kernel computed once (a third of the cost of
    a sentence when rebuilt per call; same kernel as torchaudio.functional.resample)."""
    import torchaudio

    return torchaudio.transforms.Resample(rate, SAMPLE_RATE)


def text_of(sentences: list[list[str]]) -> str:
    """Sentences as espeak-ng reads them: each ends in a full stop, so it pauses there."""
    return " ".join(" ".join(s) + "." for s in sentences)


def word_of_events(text: str, events: list[tuple[int, int, int]]) -> dict[int, int]:
    """{word index: sample of its first word event}, matched by text position.

    espeak-ng reports 1-based character positions; the first word of a later sentence
    comes with the position of the space before it (length 1), and the end of the text
    with position 0, so each event goes to the first word that ends after it.
    """
    bounds, pos = [], 0
    for word in text.split(" "):
        bounds.append(pos + len(word))
        pos += len(word) + 1
    found: dict[int, int] = {}
    for sample, position, length in events:
        if position <= 0 or length <= 0:
            continue
        k = next((i for i, end in enumerate(bounds) if end > position - 1), None)
        if k is not None and k not in found:
            found[k] = sample
    return found


def frame_rms(audio: np.ndarray, frame: int = 160) -> np.ndarray:
    """RMS of consecutive 10 ms frames."""
    n = len(audio) // frame
    return np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)


def place_words(
    loud: np.ndarray, events: list[int], total: int, frame: int = 160
) -> list[tuple[int, int]]:
    """(start, end) samples of each word from its event sample and the loud frames.

    A word event marks where espeak-ng began the word's phonemes, which can include the
    pause before it (at a sentence boundary) or a stop closure, so the start moves on
    to the first loud frame before the next event; the end moves back from the next
    word's start over quiet frames. "Loud" is the -35 dB rule that trims the word clips
    of the word-joined style, so both styles mark words the same way.
    """
    n = len(loud)
    bounds = [*events[1:], total]
    out = []
    for s, b in zip(events, bounds, strict=True):
        a, z = s // frame, max(min(b // frame, n), s // frame + 1)
        k = a
        while k < z - 1 and not loud[k]:
            k += 1
        e = z - 1
        while e > k and not loud[e]:
            e -= 1
        out.append((k * frame, (e + 1) * frame))
    return out


def speak(
    sentences: list[list[str]], voice: Voice, written: list[list[str]] | None = None
) -> Spoken:
    """The sentences spoken in one go by ``voice``, trimmed, with true word times.

    ``written`` (the same shape as ``sentences``) is what espeak-ng reads for each word
    when it is not the word itself: a phoneme string such as a filler's other vowel.
    Raises ValueError when a word gets no word event (never seen with the demo
    vocabulary; the check keeps a wrong label from ever reaching training).
    """
    text = text_of(written or sentences)
    words = [w for s in sentences for w in s]
    pcm, events = espeak().synth(text, voice)
    found = word_of_events(text, events)
    if len(found) != len(words):
        raise ValueError(f"{len(found)} of {len(words)} words have events ({voice.label()})")
    rate = espeak().rate
    audio = resampler(rate)(torch.from_numpy(pcm.astype(np.float32) / 32768.0)).numpy()
    rms = frame_rms(audio)
    loud = rms > rms.max() * 10 ** (-35 / 20)
    starts = [round(found[k] * SAMPLE_RATE / rate) for k in range(len(words))]
    spans = place_words(loud, starts, len(audio))
    first, last = spans[0][0], spans[-1][1]
    times = [((a - first) / SAMPLE_RATE, (b - first) / SAMPLE_RATE) for a, b in spans]
    return Spoken(audio[first:last].copy(), words, times)
