"""Training and test examples: utterances from word clips, features and targets.

Utterances are either concatenations of trimmed word clips with random gaps
(word-joined) or continuous speech from espeak-ng with its own word events (``speech``),
so every word's true start and end is known; that gives the exact word times of the test
manifest and the onset labels that break CTC's all-blank plateau. Training examples are
assembled afresh for every pool (``ExampleStream``), so no waveform repeats although each
(voice, word) clip is synthesised once (continuous ones get new pauses, noise, gain and
speed each time). Features are the engine's own fbank, so the
model is trained on exactly what it is served.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from scripts.demo_model.corpus import Plan
from scripts.demo_model.tts import Lexicon, Voice
from serve_app.engine.features import SAMPLE_RATE, fbank

SPEEDS = (0.9, 0.95, 1.05, 1.1, 1.15, 1.2, 1.3)
"""Speed perturbation factors of training utterances (40% stay at 1.0)."""


@dataclass
class Utterance:
    """Assembled audio with its two transcripts and the true time of every word."""

    verbatim: list[str]
    nonverbatim: list[str]
    audio: np.ndarray
    times: list[tuple[float, float]]  # true (start, end) of each verbatim word, seconds
    voice: Voice
    meta: dict[str, Any] = field(default_factory=dict)


def assemble(
    words: list[str],
    clean: list[str],
    voice: Voice,
    lexicon: Lexicon,
    rng: np.random.Generator,
    *,
    gap: tuple[float, float] = (0.05, 0.3),
    snr_db: tuple[float, float] = (22.0, 40.0),
    lead: tuple[float, float] = (0.1, 0.4),
    speed: float = 1.0,
    written: list[str] | None = None,
) -> Utterance:
    """Concatenate word clips with random gaps; add white noise at a random SNR.

    ``speed`` > 1 plays the result faster (Kaldi-style speed perturbation: tempo and pitch
    together), which stretches espeak's speed range without more synthesis. ``written``
    names each word's clip in the lexicon when it is not the word (``filler_sounds``).
    """
    clips = [lexicon[(voice, w)] for w in written or words]
    pieces: list[np.ndarray] = []
    times: list[tuple[float, float]] = []
    pos = int(rng.uniform(*lead) * SAMPLE_RATE)
    pieces.append(np.zeros(pos, dtype=np.float32))
    for k, clip in enumerate(clips):
        if k:
            g = int(rng.uniform(*gap) * SAMPLE_RATE)
            pieces.append(np.zeros(g, dtype=np.float32))
            pos += g
        times.append((pos / SAMPLE_RATE, (pos + len(clip)) / SAMPLE_RATE))
        pieces.append(clip)
        pos += len(clip)
    pieces.append(np.zeros(int(rng.uniform(*lead) * SAMPLE_RATE), dtype=np.float32))
    speech_rms = float(np.sqrt(np.mean(np.concatenate(clips) ** 2)))
    audio = np.concatenate(pieces)
    return finish(words, clean, voice, audio, times, speech_rms, rng, snr_db, speed)


def finish(
    words: list[str],
    clean: list[str],
    voice: Voice,
    audio: np.ndarray,
    times: list[tuple[float, float]],
    speech_rms: float,
    rng: np.random.Generator,
    snr_db: tuple[float, float],
    speed: float,
) -> Utterance:
    """Speed perturbation, white noise at a random SNR and a random gain: the same for
    both styles, drawn in the order the word-joined test clips always drew them."""
    if speed != 1.0:
        audio, times = perturb_speed(audio, times, speed)
    snr = rng.uniform(*snr_db)
    audio = audio + rng.normal(0, speech_rms / 10 ** (snr / 20), audio.shape).astype(np.float32)
    audio *= rng.uniform(0.4, 0.9) / max(float(np.abs(audio).max()), 1e-6)
    return Utterance(words, clean, audio.astype(np.float32), times, voice, {"snr_db": snr})


def assemble_continuous(
    sentences: list[list[str]],
    clean: list[str],
    voice: Voice,
    lexicon: Lexicon,
    rng: np.random.Generator,
    *,
    one_go: bool = True,
    pause: tuple[float, float] = (0.1, 0.7),
    snr_db: tuple[float, float] = (22.0, 40.0),
    lead: tuple[float, float] = (0.1, 0.4),
    speed: float = 1.0,
    written: list[list[str]] | None = None,
) -> Utterance:
    """Sentences spoken by espeak-ng as continuous speech, word times from its events.

    ``one_go`` speaks all sentences in one text (espeak-ng's own short pauses at the
    full stops, as ``espeak-ng -v VOICE "..."`` on a paragraph gives); otherwise each
    sentence is spoken alone and they are joined with ``pause`` seconds of silence
    (natural pauses between sentences, and the pauses VAD chunking looks for). When
    espeak-ng gives no word event for some word (a repeated "to to" is read as one)
    the utterance is built word-joined instead, so every label stays true.
    ``written`` is what espeak-ng reads for each word (``speak``).
    """
    from scripts.demo_model.speech import speak

    words = [w for s in sentences for w in s]
    written = written or sentences
    try:
        if one_go:
            spoken = [speak(sentences, voice, written)]
        else:
            spoken = [speak([s], voice, [w]) for s, w in zip(sentences, written, strict=True)]
    except ValueError:
        return assemble(words, clean, voice, lexicon, rng, snr_db=snr_db, lead=lead, speed=speed)
    pos = int(rng.uniform(*lead) * SAMPLE_RATE)
    pieces = [np.zeros(pos, dtype=np.float32)]
    times: list[tuple[float, float]] = []
    for k, sp in enumerate(spoken):
        if k:
            g = int(rng.uniform(*pause) * SAMPLE_RATE)
            pieces.append(np.zeros(g, dtype=np.float32))
            pos += g
        times += [(pos / SAMPLE_RATE + a, pos / SAMPLE_RATE + b) for a, b in sp.times]
        pieces.append(sp.audio)
        pos += len(sp.audio)
    pieces.append(np.zeros(int(rng.uniform(*lead) * SAMPLE_RATE), dtype=np.float32))
    speech_rms = float(np.sqrt(np.mean(np.concatenate([sp.audio for sp in spoken]) ** 2)))
    audio = np.concatenate(pieces)
    return finish(words, clean, voice, audio, times, speech_rms, rng, snr_db, speed)


def pad_digital_silence(utt: Utterance, rng: random.Random) -> Utterance:
    """Exact zeros (0.1-1.5 s) before and/or after an utterance, outside its noise.

    A muted microphone, a paused stream or a file padded by an editor gives digital
    silence, whose fbank (log of the energy floor in every bin) no noisy training
    utterance ever has: a model that never saw it made words of it (held-out continuous
    clips with 1 s of zeros around them: rescoring WER 21% against 10% without).
    """
    lead = int(rng.uniform(0.1, 1.5) * SAMPLE_RATE) if rng.random() < 0.7 else 0
    tail = int(rng.uniform(0.1, 1.5) * SAMPLE_RATE) if lead == 0 or rng.random() < 0.7 else 0
    audio = np.concatenate([np.zeros(lead, np.float32), utt.audio, np.zeros(tail, np.float32)])
    shift = lead / SAMPLE_RATE
    return replace(utt, audio=audio, times=[(a + shift, b + shift) for a, b in utt.times])


def filler_sounds(sentences: list[list[str]], rng: random.Random, share: float) -> list[list[str]]:
    """What espeak-ng reads for each word: a filler, with probability ``share``, as one
    of its other common vowels (``FILLER_SOUNDS``), else the word as spelled.

    espeak-ng says "uh" with each accent's STRUT vowel; people also say it as a schwa
    or a long "er", and a model that heard only the first missed fillers in an accent
    whose STRUT vowel differs (the Lancaster voice of the held-out set).
    """
    from scripts.demo_model.speech import FILLER_SOUNDS

    return [
        [
            rng.choice(FILLER_SOUNDS[w]) if w in FILLER_SOUNDS and rng.random() < share else w
            for w in s
        ]
        for s in sentences
    ]


def perturb_speed(
    audio: np.ndarray, times: list[tuple[float, float]], speed: float
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Resample as if recorded at ``speed`` times the rate (rounded to 1/160)."""
    import torchaudio

    orig = round(SAMPLE_RATE * speed / 100) * 100
    wave = torchaudio.functional.resample(torch.from_numpy(audio), orig, SAMPLE_RATE)
    factor = SAMPLE_RATE / orig
    return wave.numpy(), [(a * factor, b * factor) for a, b in times]


@dataclass
class Example:
    """One training or validation row, features computed once."""

    feats: torch.Tensor  # (T, 80) float32
    target: list[int]  # token ids + 1 (0 is <blank>)
    frames: torch.Tensor  # per encoder frame: token at each word's onset, else blank
    style: list[float]  # cat_emb: [1, 0] verbatim, [0, 1] non-verbatim


class ExampleStream:
    """Fresh training examples, one pool at a time, from the seeded sentence plan.

    Every pool re-assembles its sentences with new gaps, noise level, gain and speed
    perturbation and a random transcript style, so the model never sees the same
    waveform twice although each (voice, word) clip is synthesised only once. The
    stream is deterministic in ``seed``.
    """

    def __init__(
        self,
        plan: Plan,
        lexicon: Lexicon,
        sp: Any,
        seed: int,
        pool_size: int = 400,
        long_fraction: float = 0.0,
        long_from_pool: int = 0,
        continuous_share: float = 0.0,
        onset_delay_frames: int = 0,
        verbatim_share: float = 0.5,
        digital_silence_share: float = 0.0,
        filler_sound_share: float = 0.0,
    ) -> None:
        self.plan, self.lexicon, self.sp = plan, lexicon, sp
        self.seed, self.pool_size = seed, pool_size
        # Share of utterances that join 3-6 sentences (10-25 s): the engine decodes
        # 20 s chunks, far longer than one grammar sentence.
        # Joined utterances start at pool ``long_from_pool``: alignments are learnt on
        # single sentences first.
        self.long_fraction, self.long_from_pool = long_fraction, long_from_pool
        # Share of utterances spoken as continuous speech (espeak-ng in one go); the
        # rest are word-joined. See models/demo/README.md for the share's reasons.
        self.continuous_share = continuous_share
        # Onset labels this many encoder frames after each word's true start: a causal
        # encoder has then heard the word's first sounds when it must spike. The
        # calibrated timings adjustment takes the delay back out of the word times.
        self.onset_delay_frames = onset_delay_frames
        # Share of utterances trained as verbatim (cat_emb [1, 0], fillers kept). One
        # draw per utterance whatever the share, so the pools are otherwise unchanged.
        self.verbatim_share = verbatim_share
        # Share of utterances with digital silence around them (``pad_digital_silence``),
        # drawn from a random stream of its own so that the other draws stay as they were.
        self.digital_silence_share = digital_silence_share
        # Share of fillers said with another vowel (``filler_sounds``; the lexicon must
        # hold their clips), from a random stream of its own as well.
        self.filler_sound_share = filler_sound_share

    def pool(self, k: int) -> list[Example]:
        """Pool ``k``, seeded by (seed, k) alone: pools can be built in any thread or order."""
        rng = random.Random(self.seed * 1000 + k)
        nrng = np.random.default_rng(self.seed * 1000 + k)
        silence_rng = random.Random(self.seed * 1000 + k + 7_000_000)
        sound_rng = random.Random(self.seed * 1000 + k + 9_000_000)
        start = (k * self.pool_size) % len(self.plan)
        items = (self.plan + self.plan)[start : start + self.pool_size]
        out = []
        i = 0
        long_ok = self.long_fraction > 0 and k >= self.long_from_pool
        while i < len(items):
            n = 1
            if long_ok and rng.random() < self.long_fraction:
                n = rng.randint(3, 6)
            group = items[i : i + n]
            i += n
            verbatim_words = [w for v, _, _ in group for w in v]
            clean = [w for _, c, _ in group for w in c]
            voice = group[0][2]
            speed = 1.0 if rng.random() < 0.4 else rng.choice(SPEEDS)
            snr = (22.0, 40.0) if rng.random() < 0.8 else (4.0, 22.0)
            if self.continuous_share > 0 and rng.random() < self.continuous_share:
                one_go = n == 1 or rng.random() < 0.5
                sentences = [v for v, _, _ in group]
                utt = assemble_continuous(
                    sentences,
                    clean,
                    voice,
                    self.lexicon,
                    nrng,
                    one_go=one_go,
                    speed=speed,
                    snr_db=snr,
                    written=filler_sounds(sentences, sound_rng, self.filler_sound_share),
                )
            else:
                (written,) = filler_sounds([verbatim_words], sound_rng, self.filler_sound_share)
                utt = assemble(
                    verbatim_words,
                    clean,
                    voice,
                    self.lexicon,
                    nrng,
                    speed=speed,
                    snr_db=snr,
                    written=written,
                )
            if silence_rng.random() < self.digital_silence_share:
                utt = pad_digital_silence(utt, silence_rng)
            out.append(self.example(utt, verbatim=rng.random() < self.verbatim_share))
        return out

    def example(self, utt: Utterance, verbatim: bool) -> Example:
        """Features, tokens and onset labels of one utterance in one transcript style."""
        feats = fbank(utt.audio)
        words = utt.verbatim if verbatim else utt.nonverbatim
        return Example(
            feats,
            [i + 1 for i in self.sp.encode(" ".join(words))],
            onset_labels(
                utt,
                self.sp,
                encoder_frames(feats.shape[0]),
                verbatim=verbatim,
                delay_frames=self.onset_delay_frames,
            ),
            [1.0, 0.0] if verbatim else [0.0, 1.0],
        )


def encoder_frames(num_feats: int) -> int:
    """Output frames of conv2d 4x subsampling (two 3x3 stride-2 convolutions)."""
    return ((num_feats - 3) // 2 + 1 - 3) // 2 + 1


def onset_labels(
    utt: Utterance, sp: Any, num_frames: int, verbatim: bool, delay_frames: int = 0
) -> torch.Tensor:
    """Frame targets that put each word's tokens on the frames at its true start.

    An auxiliary cross-entropy on these breaks CTC's all-blank plateau within a few
    hundred steps (plain CTC needs thousands) and teaches spikes at word onsets, so
    aligned word starts need no correction (``delay_frames`` later, they need the
    calibrated one). Non-verbatim labels leave fillers and repeated words blank.
    """
    labels = torch.zeros(num_frames, dtype=torch.long)
    j = 0
    for word, (start, _) in zip(utt.verbatim, utt.times, strict=True):
        keep = verbatim or (j < len(utt.nonverbatim) and word == utt.nonverbatim[j])
        if not verbatim and keep:
            j += 1
        if not keep:
            continue
        k = round(start / 0.04) + delay_frames
        for n, piece in enumerate(sp.encode(word)):
            if k + n < num_frames:
                labels[k + n] = piece + 1
    return labels
