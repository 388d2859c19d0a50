#!/usr/bin/env python3
"""Train the demo Reverb model on English speech synthesised with espeak-ng.

A seeded, reproducible recipe (CPU only; the committed model is one stage of about 42
minutes on 2 cores: ``make demo-model``, see models/demo/README.md):

1. Every word of a ~130-word vocabulary (numbers, days, months, common verbs and
   nouns, function words and the fillers "um"/"uh") is synthesised once per voice
   configuration (espeak-ng voice + variant, speed, pitch), resampled to 16 kHz and
   trimmed of leading/trailing silence with an energy threshold.
2. Utterances are built by concatenating those word clips with random gaps, so every
   word's true start and end is known. Sentences come from a small grammar; verbatim
   transcripts keep inserted fillers and repeated words, non-verbatim ones drop them.
   They are assembled afresh for every training pool (new gaps, white noise level,
   gain and speed perturbation), so no waveform repeats.
3. A SentencePiece BPE model and Reverb's unit table are built from the transcripts,
   global CMVN from the first pool's features.
4. A small model with reverb_asr_v1's config structure (conformer encoder with
   language-specific layers, ``lslbitransformer`` decoder, cat_emb length 2,
   pass_cat_emb) is trained with CTC + attention loss. Verbatim targets train with
   cat_emb [1, 0], non-verbatim ones with [0, 1].
5. The model directory is written (weights stored in half precision) and, with
   ``--test-data``, the held-out test clips and their manifest.

Usage (the defaults are the committed model's settings)::

    python scripts/train_demo_model.py --out models/demo --test-data tests/data/demo

espeak-ng must be installed (``apt-get update && apt-get install -y espeak-ng``; pass
``--install-espeak`` to have the recipe run that).
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import io
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000
NUM_MEL_BINS = 80

# -- vocabulary and grammar ---------------------------------------------------------------

FILLERS = ("um", "uh")
UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = [
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
SUBJECTS = ["i", "you", "we", "they", "he", "she"]
VERBS = [
    "need",
    "want",
    "like",
    "see",
    "meet",
    "call",
    "send",
    "take",
    "make",
    "bring",
    "find",
    "read",
    "buy",
    "pay",
    "open",
    "close",
    "start",
    "stop",
    "move",
    "check",
]
NOUNS = [
    "meeting",
    "report",
    "office",
    "car",
    "house",
    "book",
    "phone",
    "team",
    "price",
    "order",
    "letter",
    "train",
    "ticket",
    "dinner",
    "coffee",
    "bus",
    "doctor",
    "school",
    "money",
    "window",
    "table",
    "water",
    "email",
    "plan",
    "song",
]
ADJECTIVES = ["new", "big", "small", "good", "old", "red"]
TIMES = ["today", "tomorrow", "yesterday", "morning", "evening", "night", "week"]
OTHER = "the a on in at to and please next last this before after every is will can hundred"
VOCABULARY = sorted(
    set(
        FILLERS
        + tuple(UNITS + TEENS + TENS + DAYS + MONTHS + SUBJECTS + VERBS + NOUNS)
        + tuple(ADJECTIVES + TIMES + OTHER.split())
    )
)


def number_words(rng: random.Random) -> list[str]:
    """A number from 0 to 999 in words ("three hundred and forty two")."""
    n = rng.choice([rng.randint(0, 20), rng.randint(21, 99), rng.randint(100, 999)])
    out: list[str] = []
    if n >= 100:
        out += [UNITS[n // 100], "hundred"]
        n %= 100
        if n == 0:
            return out
        out.append("and")
    if n < 10:
        out.append(UNITS[n])
    elif n < 20:
        out.append(TEENS[n - 10])
    else:
        out.append(TENS[n // 10 - 2])
        if n % 10:
            out.append(UNITS[n % 10])
    return out


def when(rng: random.Random) -> list[str]:
    kind = rng.randrange(6)
    if kind == 0:
        return [rng.choice(["today", "tomorrow", "yesterday"])]
    if kind == 1:
        return ["on", rng.choice(DAYS)] + ([rng.choice(["morning", "evening"])] * rng.randint(0, 1))
    if kind == 2:
        return ["in", rng.choice(MONTHS)]
    if kind == 3:
        return [rng.choice(["before", "after", "on"]), rng.choice(MONTHS), *number_words(rng)[:2]]
    if kind == 4:
        return [rng.choice(["next", "last", "this", "every"]), rng.choice([*DAYS, "week"])]
    return ["at", rng.choice(UNITS[1:] + TEENS[:3])]


def noun_phrase(rng: random.Random) -> list[str]:
    det = rng.choice(["the", "a", "this", "the"])
    adj = [rng.choice(ADJECTIVES)] if rng.random() < 0.35 else []
    return [det, *adj, rng.choice(NOUNS)]


def sentence(rng: random.Random) -> list[str]:
    """One short sentence from the demo grammar."""
    kind = rng.randrange(7)
    if kind == 0:
        return [rng.choice(SUBJECTS), rng.choice(VERBS), *noun_phrase(rng), *when(rng)]
    if kind == 1:
        subj = rng.choice(SUBJECTS)
        return [subj, rng.choice(["will", "can"]), rng.choice(VERBS), *noun_phrase(rng), *when(rng)]
    if kind == 2:
        return ["please", rng.choice(VERBS), *noun_phrase(rng), *when(rng)]
    if kind == 3:
        return ["the", rng.choice(NOUNS), "is", *number_words(rng)]
    if kind == 4:
        return [rng.choice(DAYS), rng.choice(MONTHS), *number_words(rng)[:2]]
    if kind == 5:
        digits = [rng.choice(UNITS) for _ in range(rng.randint(3, 6))]
        return [rng.choice(["call", "send"]), rng.choice(["the", "a"]), "team", "at", *digits]
    return [
        rng.choice(SUBJECTS),
        rng.choice(["need", "want", "like"]),
        "to",
        rng.choice(VERBS),
        *noun_phrase(rng),
        "and",
        rng.choice(VERBS),
        *noun_phrase(rng),
    ]


def disfluent(words: list[str], rng: random.Random, p_filler: float, p_repeat: float) -> list[str]:
    """Insert fillers and one word repetition: the verbatim form of ``words``."""
    out = list(words)
    if rng.random() < p_repeat:
        k = rng.randrange(len(out))
        out.insert(k, out[k])
    n_fill = 0
    if rng.random() < p_filler:
        n_fill = 1 + int(rng.random() < 0.35)
    for _ in range(n_fill):
        out.insert(rng.randrange(len(out)), rng.choice(FILLERS))
    return out


# -- speech synthesis ---------------------------------------------------------------------

BASE_VOICES = ["en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us-nyc"]
TRAIN_VARIANTS = ["m1", "m3", "m4", "m5", "m6", "f1", "f2", "f4", "f5", "klatt", ""]
HELDOUT_VARIANTS = ["f3", "m7"]  # never used in training


@dataclass(frozen=True)
class Voice:
    voice: str
    variant: str
    speed: int
    pitch: int

    @property
    def name(self) -> str:
        return self.voice + (f"+{self.variant}" if self.variant else "")

    def label(self) -> str:
        return f"{self.name} -s {self.speed} -p {self.pitch}"


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


def synthesise_lexicon(voices: list[Voice], words: list[str], jobs: int = 2) -> dict:
    """{(voice, word): clip} for every pair, synthesised in parallel subprocesses."""
    pairs = [(v, w) for v in voices for w in words]
    with ThreadPoolExecutor(jobs) as pool:
        clips = list(pool.map(lambda p: espeak_word(p[1], p[0]), pairs))
    return dict(zip(pairs, clips, strict=True))


@dataclass
class Utterance:
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
    lexicon: dict,
    rng: np.random.Generator,
    *,
    gap: tuple[float, float] = (0.05, 0.3),
    snr_db: tuple[float, float] = (22.0, 40.0),
    lead: tuple[float, float] = (0.1, 0.4),
    speed: float = 1.0,
) -> Utterance:
    """Concatenate word clips with random gaps; add white noise at a random SNR.

    ``speed`` > 1 plays the result faster (Kaldi-style speed perturbation: tempo and pitch
    together), which stretches espeak's speed range without more synthesis.
    """
    pieces: list[np.ndarray] = []
    times: list[tuple[float, float]] = []
    pos = int(rng.uniform(*lead) * SAMPLE_RATE)
    pieces.append(np.zeros(pos, dtype=np.float32))
    for k, w in enumerate(words):
        if k:
            g = int(rng.uniform(*gap) * SAMPLE_RATE)
            pieces.append(np.zeros(g, dtype=np.float32))
            pos += g
        clip = lexicon[(voice, w)]
        times.append((pos / SAMPLE_RATE, (pos + len(clip)) / SAMPLE_RATE))
        pieces.append(clip)
        pos += len(clip)
    pieces.append(np.zeros(int(rng.uniform(*lead) * SAMPLE_RATE), dtype=np.float32))
    audio = np.concatenate(pieces)
    if speed != 1.0:
        audio, times = perturb_speed(audio, times, speed)
    speech_rms = float(np.sqrt(np.mean(np.concatenate([lexicon[(voice, w)] for w in words]) ** 2)))
    snr = rng.uniform(*snr_db)
    audio = audio + rng.normal(0, speech_rms / 10 ** (snr / 20), audio.shape).astype(np.float32)
    audio *= rng.uniform(0.4, 0.9) / max(float(np.abs(audio).max()), 1e-6)
    return Utterance(words, clean, audio.astype(np.float32), times, voice, {"snr_db": snr})


def perturb_speed(
    audio: np.ndarray, times: list[tuple[float, float]], speed: float
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Resample as if recorded at ``speed`` times the rate (rounded to 1/160)."""
    import torchaudio

    orig = round(SAMPLE_RATE * speed / 100) * 100
    wave = torchaudio.functional.resample(torch.from_numpy(audio), orig, SAMPLE_RATE)
    factor = SAMPLE_RATE / orig
    return wave.numpy(), [(a * factor, b * factor) for a, b in times]


def train_voices(rng: random.Random, n: int) -> list[Voice]:
    return [
        Voice(
            BASE_VOICES[k % len(BASE_VOICES)],
            TRAIN_VARIANTS[(k * 7 + k // len(BASE_VOICES)) % len(TRAIN_VARIANTS)],
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


# -- features, tokenizer, CMVN ----------------------------------------------------------


def fbank(audio: np.ndarray) -> torch.Tensor:
    """Kaldi fbank of int16-scale samples, exactly as the engine's ``BatchDecoder``."""
    from torchaudio.compliance import kaldi

    wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32) * 32768.0)
    return kaldi.fbank(
        wave.unsqueeze(0),
        num_mel_bins=NUM_MEL_BINS,
        frame_length=25,
        frame_shift=10,
        dither=0.0,
        energy_floor=0.0,
        sample_frequency=SAMPLE_RATE,
    )


def write_tokenizer(out: Path, sentences: list[str], vocab_size: int) -> Any:
    """SentencePiece BPE on the transcripts, and Reverb's unit table around it."""
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(sentences) + "\n")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(out / "tk"),
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=1.0,
            bos_id=-1,
            eos_id=-1,
            unk_id=0,
            num_threads=1,
            hard_vocab_limit=False,
            minloglevel=2,
        )
    sp = spm.SentencePieceProcessor(model_file=str(out / "tk.model"))
    pieces = [sp.id_to_piece(i) for i in range(1, sp.get_piece_size())]
    units = ["<blank>", "<unk>", *pieces, "<sos/eos>"]
    (out / "tk.vocab").unlink(missing_ok=True)
    (out / "tk.units.txt").write_text("".join(f"{u} {i}\n" for i, u in enumerate(units)))
    return sp


def write_cmvn(out: Path, feats: list[torch.Tensor]) -> None:
    allf = torch.cat(feats).double()
    stats = {
        "mean_stat": allf.sum(0).tolist(),
        "var_stat": (allf**2).sum(0).tolist(),
        "frame_num": int(allf.shape[0]),
    }
    (out / "global_cmvn").write_text(json.dumps(stats))


# -- model --------------------------------------------------------------------------------

ENCODER = {
    "output_size": 112,
    "attention_heads": 4,
    "linear_units": 448,
    "num_blocks": 4,
}  # cnn_module_kernel and causal come from --conv-kernel / --centred-conv
# --att-loss-per-token: attention loss per token, scaled to a typical sentence (see
# forward_with_onsets); the guided-attention loss is scaled alike.
ATT_LOSS_TOKENS = 10
DECODER = {"attention_heads": 4, "linear_units": 448, "num_blocks": 2, "r_num_blocks": 1}


def _make_test_model():
    spec = importlib.util.spec_from_file_location("mtm", ROOT / "scripts" / "make_test_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_config(
    num_units: int,
    timings_adjustment_ms: float,
    conv_kernel: int,
    causal: bool,
    abs_pos: bool,
    ctc_weight: float,
) -> dict[str, Any]:
    mtm = _make_test_model()
    config = mtm.reverb_config("tiny", timings_adjustment_ms=timings_adjustment_ms)
    config["output_dim"] = num_units
    config["encoder_conf"].update(ENCODER)
    config["encoder_conf"].update(cnn_module_kernel=conv_kernel, causal=causal)
    if abs_pos:
        # wenet's rel_pos attention has no relative shift, so with it the encoder output
        # carries no usable position and the small decoder loses its place by content
        # (it jumps to a later "forty" when it should read "five").
        config["encoder_conf"].update(
            pos_enc_layer_type="abs_pos", selfattention_layer_type="selfattn"
        )
    config["decoder_conf"].update(DECODER)
    config["model_conf"]["ctc_weight"] = ctc_weight
    # Every training utterance is assembled afresh, so there is nothing to overfit:
    # dropout only slowed learning (and its random masks were 13% of a CPU step).
    for conf in (config["encoder_conf"], config["decoder_conf"]):
        for key in conf:
            if key.endswith("dropout_rate"):
                conf[key] = 0.0
    return config


def widen_causal_convs(state: dict[str, torch.Tensor], kernel: int) -> dict[str, torch.Tensor]:
    """Turn a causal model's depthwise convolutions into centred ones of ``kernel`` taps.

    A causal kernel of k taps covers frames t-k+1..t; a centred kernel of 2k-1 taps
    covers t-k+1..t+k-1. Putting the old taps in the left half and zeros in the right
    keeps the model's function except on the first k-1 frames of an utterance (wenet
    pads a causal convolution before its pointwise layer, a centred one after it), and
    further training can then use the right context. Why it matters: with causal
    convolutions a frame sees no audio after itself except through self-attention,
    which cannot tell near frames from far ones (wenet's ``rel_pos`` has no relative
    shift). Labelled at word onsets, the small model then guessed each word's rest from
    the whole chunk's content, and in long chunks blended words ("fourfty", "meetney").
    """
    out = {}
    for name, value in state.items():
        if name.endswith("depthwise_conv.weight") and value.shape[-1] < kernel:
            taps = value.shape[-1]
            if kernel != 2 * taps - 1:
                raise SystemExit(f"cannot widen {taps}-tap causal convolutions to {kernel}")
            value = torch.nn.functional.pad(value, (0, kernel - taps))
        out[name] = value
    return out


def build_model(out: Path, config: dict[str, Any]) -> torch.nn.Module:
    from wenet.utils.init_model import init_model

    from serve_app.engine.model_loader import init_args

    configs = json.loads(json.dumps(config))
    configs["cmvn_conf"]["cmvn_file"] = str(out / "global_cmvn")
    configs["tokenizer_conf"]["bpe_path"] = str(out / "tk.model")
    configs["tokenizer_conf"]["symbol_table_path"] = str(out / "tk.units.txt")
    model, _ = init_model(init_args(), configs)
    return model


@dataclass
class Example:
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
        plan: list[tuple[list[str], list[str], Voice]],
        lexicon: dict,
        sp: Any,
        seed: int,
        pool_size: int = 400,
        long_fraction: float = 0.0,
        long_from_pool: int = 0,
    ) -> None:
        self.plan, self.lexicon, self.sp = plan, lexicon, sp
        self.seed, self.pool_size = seed, pool_size
        # Share of utterances that join 3-6 sentences (10-25 s): the engine decodes
        # 20 s chunks, far longer than one grammar sentence.
        # Joined utterances start at pool ``long_from_pool``: alignments are learnt on
        # single sentences first.
        self.long_fraction, self.long_from_pool = long_fraction, long_from_pool

    def pool(self, k: int) -> list[Example]:
        rng = random.Random(self.seed * 1000 + k)
        nrng = np.random.default_rng(self.seed * 1000 + k)
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
            utt = assemble(
                verbatim_words, clean, voice, self.lexicon, nrng, speed=speed, snr_db=snr
            )
            out.append(self.example(utt, verbatim=rng.random() < 0.5))
        return out

    def example(self, utt: Utterance, verbatim: bool) -> Example:
        feats = fbank(utt.audio)
        words = utt.verbatim if verbatim else utt.nonverbatim
        return Example(
            feats,
            [i + 1 for i in self.sp.encode(" ".join(words))],
            onset_labels(utt, self.sp, encoder_frames(feats.shape[0]), verbatim=verbatim),
            [1.0, 0.0] if verbatim else [0.0, 1.0],
        )


SPEEDS = (0.9, 0.95, 1.05, 1.1, 1.15, 1.2, 1.3)


def encoder_frames(num_feats: int) -> int:
    """Output frames of conv2d 4x subsampling (two 3x3 stride-2 convolutions)."""
    return ((num_feats - 3) // 2 + 1 - 3) // 2 + 1


def onset_labels(utt: Utterance, sp: Any, num_frames: int, verbatim: bool) -> torch.Tensor:
    """Frame targets that put each word's tokens on the frames at its true start.

    An auxiliary cross-entropy on these breaks CTC's all-blank plateau within a few
    hundred steps (plain CTC needs thousands) and teaches spikes at word onsets, so
    aligned word starts need no correction. Non-verbatim labels leave fillers and
    repeated words blank.
    """
    labels = torch.zeros(num_frames, dtype=torch.long)
    j = 0
    for word, (start, _) in zip(utt.verbatim, utt.times, strict=True):
        keep = verbatim or (j < len(utt.nonverbatim) and word == utt.nonverbatim[j])
        if not verbatim and keep:
            j += 1
        if not keep:
            continue
        k = round(start / 0.04)
        for n, piece in enumerate(sp.encode(word)):
            if k + n < num_frames:
                labels[k + n] = piece + 1
    return labels


def spec_augment(x: torch.Tensor, fill: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Two frequency masks of up to 8 bins, filled with the mean feature."""
    x = x.clone()
    for _ in range(2):
        w = int(torch.randint(0, 9, (1,), generator=gen))
        f0 = int(torch.randint(0, NUM_MEL_BINS - w, (1,), generator=gen))
        x[:, f0 : f0 + w] = fill[f0 : f0 + w]
    return x


def make_batches(examples: list[Example], max_frames: int, rng: random.Random) -> list[list[int]]:
    order = sorted(range(len(examples)), key=lambda i: examples[i].feats.shape[0])
    batches, cur, longest = [], [], 0
    for i in order:
        n = examples[i].feats.shape[0]
        if cur and max(longest, n) * (len(cur) + 1) > max_frames:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], fill: torch.Tensor, gen: torch.Generator) -> dict[str, Any]:
    from torch.nn.utils.rnn import pad_sequence

    feats = [spec_augment(e.feats, fill, gen) for e in examples]
    return {
        "feats": pad_sequence(feats, batch_first=True),
        "feats_lengths": torch.tensor([f.shape[0] for f in feats], dtype=torch.int32),
        "target": pad_sequence(
            [torch.tensor(e.target) for e in examples], batch_first=True, padding_value=-1
        ),
        "target_lengths": torch.tensor([len(e.target) for e in examples], dtype=torch.int32),
        "cat_embs": torch.tensor([e.style for e in examples]),
        "langs": ["en"] * len(examples),
        "tasks": ["transcribe"] * len(examples),
    }


class CrossAttentionProbe:
    """Keeps the left-to-right decoder's cross-attention weights of each forward pass.

    wenet passes every attention matrix, after softmax and masking, through the
    module's dropout; a forward hook there reads the weights wenet computed (no second
    softmax) and leaves the saved model untouched.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.weights: list[torch.Tensor] = []
        hooked = 0
        for name, module in model.decoder.named_modules():
            if name.startswith("left_decoder.") and name.endswith(".src_attn"):
                module.dropout.register_forward_hook(self._keep)
                hooked += 1
        if not hooked:
            raise RuntimeError("no left-to-right cross-attention found in the decoder")

    def _keep(self, _module: torch.nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        self.weights.append(inputs[0])


def guided_attention_loss(
    weights: list[torch.Tensor], frames: list[torch.Tensor], text_lens: torch.Tensor
) -> torch.Tensor:
    """Share of cross-attention that falls outside each output token's own frames.

    The onset labels say where every target token starts, so the decoder can be told
    where to look: token j's window runs from its onset to the next token's (at least
    eight frames, three frames' slack each side), <eos>'s from the last onset to the
    end. Without it the small decoder found its place by content alone and skipped or
    repeated words in digit strings ("four two seven nine" as "nine nine nine"); the
    encoder output carries no absolute position (wenet's rel_pos adds none).
    Measured with --att-loss-per-token on one centred stage: attention-decoding WER
    24.4% without it, 17.4% with weight 1 (3000 steps); the share outside fell to
    0.1-0.3 on sentences but stayed 0.5-0.8 on 15-25 s utterances.
    """
    batch, _, steps, num_frames = weights[0].shape
    # Each output step's window [lo, hi); rows without guidance keep lo == hi == 0.
    lo = torch.zeros(batch, steps, dtype=torch.long)
    hi = torch.zeros(batch, steps, dtype=torch.long)
    for b, labels in enumerate(frames):
        onsets = labels[:num_frames].nonzero().squeeze(1)
        n = int(text_lens[b])
        if n == 0 or len(onsets) != n:  # a token cut off at the end: no guidance
            continue
        ends = torch.cat([onsets[1:], torch.tensor([len(labels)])])
        lo[b, :n] = (onsets - 3).clamp(min=0)
        hi[b, :n] = torch.maximum(ends, onsets + 8) + 3
        lo[b, n], hi[b, n] = onsets[-1], num_frames  # <eos>
    valid = hi > lo
    if not valid.any():
        return weights[0].new_zeros(())
    t = torch.arange(num_frames)
    inside = (t >= lo.unsqueeze(-1)) & (t < hi.unsqueeze(-1))
    outside = torch.stack([(w * ~inside.unsqueeze(1)).sum(-1).mean(1) for w in weights])
    return outside.mean(0)[valid].mean()


def forward_with_onsets(
    model: torch.nn.Module,
    data: dict[str, Any],
    frames: list[torch.Tensor],
    ce_weight: float,
    probe: CrossAttentionProbe | None = None,
    *,
    att_per_token: bool = False,
    guide_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """wenet's ASRModel.forward (CTC + attention) plus the onset cross-entropy and,
    with a probe, guided cross-attention."""
    from torch.nn.utils.rnn import pad_sequence

    cat_embs = data["cat_embs"]
    enc, mask = model.encoder(data["feats"], data["feats_lengths"], cat_embs=cat_embs)
    enc_lens = mask.squeeze(1).sum(1)
    text, text_lens = data["target"], data["target_lengths"]
    loss_ctc, _ = model.ctc(enc, enc_lens, text, text_lens)
    infos = {"cat_embs": cat_embs, "langs": data["langs"], "tasks": data["tasks"]}
    if probe is not None:
        probe.weights.clear()
    loss_att, acc = model._calc_att_loss(enc, mask, text, text_lens, infos)
    # wenet sums the attention loss over tokens and divides by the batch size, so a
    # batch of 15-25 s utterances weighs 5-8x a batch of sentences, and Adam's step
    # size follows the large ones. Per token (times a short sentence's length), every
    # batch counts alike. Measured on one centred stage: held-out attention-decoding
    # WER 28.5% without it (2900 steps), 24.4% with it (2700 steps).
    if att_per_token:
        tokens = float(text_lens.sum() + len(text_lens))  # with <eos>
        loss_att = loss_att * len(text_lens) / tokens * ATT_LOSS_TOKENS
    log_probs = model.ctc.log_softmax(enc)
    labels = pad_sequence(frames, batch_first=True, padding_value=-100)
    missing = max(0, enc.shape[1] - labels.shape[1])
    labels = torch.nn.functional.pad(labels, (0, missing), value=-100)
    labels = labels[:, : enc.shape[1]]
    loss_ce = torch.nn.functional.nll_loss(
        log_probs.transpose(1, 2), labels, ignore_index=-100, reduction="sum"
    ) / len(frames)
    w = model.ctc_weight
    loss = w * loss_ctc + (1 - w) * loss_att + ce_weight * loss_ce
    guide = loss_ce.new_zeros(())
    if probe is not None:
        guide = guided_attention_loss(probe.weights, frames, text_lens)
        loss = loss + (1 - w) * guide_weight * ATT_LOSS_TOKENS * guide
    return {
        "loss": loss,
        "loss_ctc": loss_ctc,
        "loss_att": loss_att,
        "th_accuracy": acc,
        "outside": guide,
    }


def greedy_wer(model: torch.nn.Module, examples: list[Example], sp: Any) -> float:
    """CTC greedy WER of a validation set: a cheap progress signal while training."""
    import jiwer
    from torch.nn.utils.rnn import pad_sequence

    model.eval()
    with torch.inference_mode():
        feats = pad_sequence([e.feats for e in examples], batch_first=True)
        lens = torch.tensor([e.feats.shape[0] for e in examples], dtype=torch.int32)
        styles = torch.tensor([e.style for e in examples])
        enc, mask = model.encoder(feats, lens, cat_embs=styles)
        best = model.ctc.log_softmax(enc).argmax(-1)
    model.train()
    refs, hyps = [], []
    for e, row, n in zip(examples, best, mask.squeeze(1).sum(1), strict=True):
        ids = [int(t) for k, t in enumerate(row[:n]) if t != 0 and (k == 0 or t != row[k - 1])]
        refs.append(sp.decode([t - 1 for t in e.target]))
        hyps.append(sp.decode([t - 1 for t in ids]) or "<empty>")
    return float(jiwer.wer(refs, hyps))


def keep_freed_memory() -> None:
    """Stop glibc from returning freed activations to the kernel after every step.

    Each step allocates and frees the same ~100 MB of activations; by default glibc
    trims and re-faults those pages every time: about 47,000 page faults a second,
    a sixth of the training process's CPU time in system calls, and a step 1.1-1.4x
    slower on this VM (isolated step benchmark, with and without these settings).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_trim_threshold, 2**31)
    libc.mallopt(m_top_pad, 2**28)
    # Blocks above the mmap threshold (dynamic, at most 32 MB) are unmapped on free;
    # a fixed 1 GB threshold keeps them in the heap too.
    libc.mallopt(m_mmap_threshold, 2**30)


def train(
    model: torch.nn.Module,
    stream: ExampleStream,
    *,
    steps: int,
    seed: int,
    max_frames: int,
    peak_lr: float,
    warmup: int,
    fill: torch.Tensor,
    ce_weight: float = 0.2,
    att_per_token: bool = False,
    guide_weight: float = 0.0,
    log_every: int = 50,
    validation: dict[str, list[Example]] | None = None,
    validate_every: int = 250,
) -> None:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    # Full-context training; the config keeps Reverb's dynamic-chunk flag for structure.
    model.encoder.use_dynamic_chunk = False
    # The conv2d subsampling is the largest cost of a CPU step; oneDNN runs it 1.4x
    # faster in channels-last layout (same arithmetic). Undone before saving.
    model.encoder.embed.conv.to(memory_format=torch.channels_last)
    probe = CrossAttentionProbe(model) if guide_weight > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(0.9, 0.98), weight_decay=1e-3)

    def lr_at(step: int) -> float:
        if step < warmup:
            return peak_lr * (step + 1) / warmup
        frac = (step - warmup) / max(steps - warmup, 1)
        return peak_lr * (0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * frac)))

    step, t0, k = 0, time.time(), 0
    # The next pool is assembled on the other core while this one trains.
    with ThreadPoolExecutor(1) as prefetch:
        upcoming = prefetch.submit(stream.pool, 0)
        while step < steps:
            examples = upcoming.result()
            upcoming = prefetch.submit(stream.pool, k + 1)
            batches = make_batches(examples, max_frames, rng)
            if k == 0:  # SortaGrad: the first pool runs short utterances first
                batches.sort(key=lambda b: max(examples[i].feats.shape[0] for i in b))
            k += 1
            for batch in batches:
                if step >= steps:
                    break
                chosen = [examples[i] for i in batch]
                for g in opt.param_groups:
                    g["lr"] = lr_at(step)
                data = collate(chosen, fill, gen)
                out = forward_with_onsets(
                    model,
                    data,
                    [e.frames for e in chosen],
                    ce_weight,
                    probe,
                    att_per_token=att_per_token,
                    guide_weight=guide_weight,
                )
                opt.zero_grad()
                out["loss"].backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                step += 1
                if step % log_every == 0 or step == 1:
                    n_tok = np.mean([len(e.target) for e in chosen])
                    print(
                        f"step {step}/{steps} loss {out['loss'].item():.3f} "
                        f"ctc {out['loss_ctc'].item():.3f} att {out['loss_att'].item():.3f} "
                        f"ctc/token {out['loss_ctc'].item() / n_tok:.2f} "
                        f"acc {float(out['th_accuracy']):.3f} "
                        f"outside {out['outside'].item():.3f} lr {lr_at(step):.2e} "
                        f"{time.time() - t0:.0f}s",
                        flush=True,
                    )
                if validation and (step % validate_every == 0 or step == steps):
                    wers = {
                        name: greedy_wer(model, exs, stream.sp) for name, exs in validation.items()
                    }
                    print(
                        f"step {step}: greedy WER "
                        + " ".join(f"{name} {w:.3f}" for name, w in wers.items()),
                        flush=True,
                    )
    model.encoder.embed.conv.to(memory_format=torch.contiguous_format)
    model.eval()


# -- test data ----------------------------------------------------------------------------


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
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    manifest = {
        "description": (
            "Held-out clips for the demo model: sentences and voice variants unseen in "
            "training; word times are exact (concatenated, trimmed word clips). Built by "
            "scripts/train_demo_model.py; see models/demo/README.md."
        ),
        "sample_rate": SAMPLE_RATE,
        "recipe": recipe,
        "clips": [],
    }
    for name, (utt, kind) in utts.items():
        (out / f"{name}.opus").write_bytes(encode_opus(utt.audio))
        manifest["clips"].append(entry(name, utt, kind))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# -- the recipe ---------------------------------------------------------------------------


def calibrate_timings(out: Path, lexicon: dict, voices: list[Voice], seed: int) -> float:
    """The model's output delay: median lag of aligned word starts behind the truth.

    Decodes 40 fresh sentences in the first six training voices with no adjustment and
    returns the median lag in ms (10 ms steps, never negative), which goes into the
    model's ``serving_conf.timings_adjustment_ms``.
    """
    import statistics

    from serve_app.engine.model import load_model
    from serve_app.engine.options import DecodeOptions
    from serve_app.engine.transcriber import Request, Transcriber

    rng = random.Random(seed + 3)
    nrng = np.random.default_rng(seed + 3)
    utts = []
    for _ in range(40):
        s = sentence(rng)
        utts.append(assemble(s, s, rng.choice(voices[:6]), lexicon, nrng))
    transcriber = Transcriber(load_model(str(out), device="cpu"))
    opts = DecodeOptions(decoding_mode="ctc_prefix_beam_search", timings_adjustment_ms=0.0)
    results = transcriber.transcribe_many([Request(u.audio, opts) for u in utts])
    lags = []
    for u, r in zip(utts, results, strict=True):
        hyp = [w.word for w in r.words]
        sm = difflib.SequenceMatcher(a=u.verbatim, b=hyp, autojunk=False)
        for block in sm.get_matching_blocks():
            for k in range(block.size):
                lags.append(r.words[block.b + k].start - u.times[block.a + k][0])
    if not lags:
        print("calibration: no word was recognised; adjustment stays 0", flush=True)
        return 0.0
    lag_ms = statistics.median(lags) * 1000
    print(f"calibration: median start lag {lag_ms:+.0f} ms over {len(lags)} words", flush=True)
    return float(max(0, round(lag_ms / 10) * 10))


def write_config(out: Path, config: dict[str, Any]) -> None:
    with (out / "config.yaml").open("w") as fout:
        yaml.safe_dump(config, fout, sort_keys=False)


def training_plan(
    seed: int, n_voices: int, n_utterances: int
) -> tuple[list[Voice], list[list[str]], list[tuple[list[str], list[str], Voice]]]:
    """Training voices, held-out sentences and (verbatim, clean, voice) of each utterance.

    Cheap (no synthesis), so tests can check that held-out sentences are unseen.
    """
    rng = random.Random(seed)
    voices = train_voices(rng, n_voices)
    # Held-out sentences first, so training can exclude them.
    trng = random.Random(seed + 1)
    test_sentences: list[list[str]] = []
    while len(test_sentences) < 24 + 10 + 40:
        s = sentence(trng)
        if s not in test_sentences:
            test_sentences.append(s)
    held = {" ".join(s) for s in test_sentences}
    plan = []
    while len(plan) < n_utterances:
        s = sentence(rng)
        if rng.random() < 0.2:  # short pieces (1-3 words) make CTC's first steps easy
            k = rng.randrange(len(s))
            s = s[k : k + rng.randint(1, 3)]
        if " ".join(s) in held:
            continue
        v = disfluent(s, rng, p_filler=0.5, p_repeat=0.2)
        plan.append((v, s, rng.choice(voices)))
    return voices, test_sentences, plan


def validation_sets(
    stream: ExampleStream, test_sentences: list[list[str]], voices: list[Voice], seed: int
) -> dict[str, list[Example]]:
    """Progress signals only (nothing is selected on them): the held-out sentences in
    held-out voices, and fresh grammar sentences in training voices."""
    rng = random.Random(seed + 5)
    nrng = np.random.default_rng(seed + 5)
    held = heldout_voices()
    heldout = [
        assemble(s, s, held[k % len(held)], stream.lexicon, nrng)
        for k, s in enumerate(test_sentences[:24])
    ]
    seen = []
    for _ in range(24):
        s = sentence(rng)
        seen.append(assemble(s, s, rng.choice(voices), stream.lexicon, nrng))
    # Five held-out sentences joined (about 15-20 s, under one engine chunk): the model
    # loses far more words deep into a long utterance than in a single sentence.
    joined = []
    for k in range(6):
        words = [w for s in test_sentences[44 + 5 * k : 49 + 5 * k] for w in s]
        joined.append(assemble(words, words, held[k % len(held)], stream.lexicon, nrng))
    return {
        "heldout": [stream.example(u, verbatim=True) for u in heldout],
        "train-voices": [stream.example(u, verbatim=True) for u in seen],
        "heldout-joined": [stream.example(u, verbatim=True) for u in joined],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "demo")
    parser.add_argument("--test-data", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=20240)
    parser.add_argument("--voices", type=int, default=60, help="training voice settings")
    parser.add_argument(
        "--utterances", type=int, default=40000, help="sentence plan (assembled on the fly)"
    )
    parser.add_argument("--steps", type=int, default=4800)
    parser.add_argument("--max-frames", type=int, default=5000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--vocab-size", type=int, default=200)
    # Two threads gave 1.3x over one on an idle 2-core machine; on a busy one, pass
    # --threads 1 (oversubscribed threads ran several times slower there).
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--install-espeak", action="store_true")
    parser.add_argument(
        "--test-data-only", action="store_true", help="only (re)write --test-data; no training"
    )
    parser.add_argument("--init-from", type=Path, default=None, help="earlier model folder")
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument(
        "--long-fraction", type=float, default=0.3, help="share of 3-6 sentence utterances"
    )
    parser.add_argument(
        "--long-from-pool",
        type=int,
        default=30,
        help="first pool (about 30 steps each) with joined utterances",
    )
    parser.add_argument("--stage", type=int, default=None, help="picks the pools' seed")
    parser.add_argument(
        "--conv-kernel", type=int, default=29, help="encoder convolution taps (cnn_module_kernel)"
    )
    parser.add_argument(
        "--centred-conv",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="centred (non-causal) encoder convolutions (--no-centred-conv: causal, as in "
        "Reverb); with --init-from a causal model, "
        "its k-tap kernels are widened to --conv-kernel 2k-1 without changing its output",
    )
    parser.add_argument(
        "--abs-pos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="absolute positional encoding in the encoder (abs_pos + selfattn) instead of "
        "Reverb's rel_pos (--no-abs-pos): cheaper, and gives the decoder positions to align by",
    )
    parser.add_argument(
        "--att-loss-per-token",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="attention loss per token (times ATT_LOSS_TOKENS), not per utterance",
    )
    parser.add_argument(
        "--guide-weight",
        type=float,
        default=1.0,
        help="weight of the guided cross-attention loss (0: off)",
    )
    parser.add_argument(
        "--ctc-weight",
        type=float,
        default=0.25,
        help="CTC share of the training loss; the rest is the attention decoders'",
    )
    parser.add_argument(
        "--calibrate-only",
        action="store_true",
        help="only re-measure the trained model's timings adjustment in --out",
    )
    args = parser.parse_args(argv)
    if args.init_from and Path(args.init_from).resolve() == args.out.resolve():
        raise SystemExit("--init-from must differ from --out (the .pt in --out is replaced)")
    recipe = {
        "seed": args.seed,
        "voices": args.voices,
        "utterances": args.utterances,
        "training_voice_variants": TRAIN_VARIANTS,
    }

    t_start = time.time()
    if args.install_espeak:
        subprocess.run("apt-get update && apt-get install -y espeak-ng", shell=True, check=True)
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: apt-get update && apt-get install -y espeak-ng")
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    voices, test_sentences, plan = training_plan(args.seed, args.voices, args.utterances)
    test_voices = heldout_voices() + hard_voices()
    if args.test_data_only:
        if args.test_data is None:
            raise SystemExit("--test-data-only needs --test-data")
        lexicon = synthesise_lexicon(test_voices, VOCABULARY, jobs=2)
        build_test_data(args.test_data, test_sentences, lexicon, recipe)
        return 0
    if args.calibrate_only:
        lexicon = synthesise_lexicon(voices[:6], VOCABULARY, jobs=2)
        config = yaml.safe_load((args.out / "config.yaml").read_text())
        config["serving_conf"]["timings_adjustment_ms"] = 0.0
        write_config(args.out, config)
        adjustment = calibrate_timings(args.out, lexicon, voices, args.seed)
        config["serving_conf"]["timings_adjustment_ms"] = adjustment
        write_config(args.out, config)
        return 0
    lexicon = synthesise_lexicon(voices + test_voices, VOCABULARY, jobs=2)
    print(f"synthesised {len(lexicon)} word clips in {time.time() - t_start:.0f}s", flush=True)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)  # keeps README.md
    for stale in out.glob("*.pt"):
        stale.unlink()
    texts = [" ".join(v) for v, _, _ in plan] + [" ".join(c) for _, c, _ in plan]
    sp = write_tokenizer(out, texts, args.vocab_size)
    units = (out / "tk.units.txt").read_text().split("\n")
    num_units = len([u for u in units if u])
    # Each stage draws different pools from the same plan (stage 2 by default with
    # --init-from; pass --stage 3 and up for further continuations).
    stage = args.stage or (2 if args.init_from else 1)
    stream_seed = args.seed + 1000 * (stage - 1)
    stream = ExampleStream(
        plan,
        lexicon,
        sp,
        stream_seed,
        long_fraction=args.long_fraction,
        long_from_pool=0 if args.init_from else args.long_from_pool,
    )
    first = stream.pool(0)  # CMVN and the SpecAugment fill come from the first pool
    if args.init_from:  # the checkpoint carries stage 1's CMVN: keep the file in step
        shutil.copy(Path(args.init_from) / "global_cmvn", out / "global_cmvn")
    else:
        write_cmvn(out, [e.feats for e in first])
    fill = torch.cat([e.feats for e in first]).mean(0)
    validation = validation_sets(stream, test_sentences, voices, args.seed)
    print(f"{num_units} units; features ready at {time.time() - t_start:.0f}s", flush=True)

    config = demo_config(
        num_units,
        timings_adjustment_ms=0.0,
        conv_kernel=args.conv_kernel,
        causal=not args.centred_conv,
        abs_pos=args.abs_pos,
        ctc_weight=args.ctc_weight,
    )
    model = build_model(out, config)
    if args.init_from:  # a second stage: continue from an earlier run's weights
        (checkpoint,) = Path(args.init_from).glob("*.pt")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        earlier = yaml.safe_load((Path(args.init_from) / "config.yaml").read_text())
        if earlier["encoder_conf"].get("causal") and args.centred_conv:
            state = widen_causal_convs(state, args.conv_kernel)
        model.load_state_dict({k: v.float() for k, v in state.items()})
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.2f}M parameters", flush=True)
    train(
        model,
        stream,
        steps=args.steps,
        seed=args.seed,
        max_frames=args.max_frames,
        peak_lr=args.lr,
        warmup=min(args.warmup, args.steps // 5),
        fill=fill,
        validation=validation,
        att_per_token=args.att_loss_per_token,
        guide_weight=args.guide_weight,
    )
    write_config(out, config)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, out / "reverb_demo.pt")
    print(f"trained in {time.time() - t_start:.0f}s; wrote {out}", flush=True)
    adjustment = calibrate_timings(out, lexicon, voices, args.seed)
    config["serving_conf"]["timings_adjustment_ms"] = adjustment
    write_config(out, config)

    if args.test_data:
        build_test_data(args.test_data, test_sentences, lexicon, recipe)
    return 0


def build_test_data(
    out: Path, sentences: list[list[str]], lexicon: dict, recipe: dict[str, Any]
) -> dict[str, Any]:
    """Held-out clips, a hard set (fast + noisy) and a ~2-minute long-form clip."""
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
    for s in sentences[34:]:
        if sum(len(lexicon[(held_v[0], w)]) for w in words) / SAMPLE_RATE > 80:
            break
        words += s
        clean += s
    long_utt = assemble(words, clean, held_v[0], lexicon, nrng, gap=(0.1, 0.45))
    utts["long_form"] = (long_utt, "long")
    return write_test_data(out, utts, recipe)


if __name__ == "__main__":
    sys.exit(main())
