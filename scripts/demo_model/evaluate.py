"""Measuring the demo model: progress WERs while training, the timings calibration.

Nothing is selected on these numbers (the held-out clips of tests/test_demo_model.py
are the real measure); they say whether a run is on track, and the calibration sets
the one serving parameter the recipe derives from the trained model, the word-timing
adjustment. The calibration decodes through the engine's ``Transcriber``, so it
measures the model as it is served.
"""

from __future__ import annotations

import difflib
import random
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from scripts.demo_model.corpus import sentence
from scripts.demo_model.data import (
    Example,
    ExampleStream,
    Utterance,
    assemble,
    assemble_continuous,
)
from scripts.demo_model.model_config import write_config
from scripts.demo_model.tts import Lexicon, Voice, continuous_voices, heldout_voices


def greedy_wer(model: torch.nn.Module, examples: list[Example], sp: Any, chunk: int = -1) -> float:
    """CTC greedy WER of a validation set: a cheap progress signal while training.

    ``chunk`` > 0 decodes with that attention chunk (wenet's ``decoding_chunk_size``,
    all left chunks), as a streaming decode sees the audio."""
    import jiwer
    from torch.nn.utils.rnn import pad_sequence

    model.eval()
    with torch.inference_mode():
        feats = pad_sequence([e.feats for e in examples], batch_first=True)
        lens = torch.tensor([e.feats.shape[0] for e in examples], dtype=torch.int32)
        styles = torch.tensor([e.style for e in examples])
        enc, mask = model.encoder(
            feats, lens, decoding_chunk_size=chunk, num_decoding_left_chunks=-1, cat_embs=styles
        )
        best = model.ctc.log_softmax(enc).argmax(-1)
    model.train()
    refs, hyps = [], []
    for e, row, n in zip(examples, best, mask.squeeze(1).sum(1), strict=True):
        ids = [int(t) for k, t in enumerate(row[:n]) if t != 0 and (k == 0 or t != row[k - 1])]
        refs.append(sp.decode([t - 1 for t in e.target]))
        hyps.append(sp.decode([t - 1 for t in ids]) or "<empty>")
    return float(jiwer.wer(refs, hyps))


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
    # Continuous speech: the same held-out sentences spoken in one go by espeak-ng in
    # the continuous sets' unseen voices (the test clips use other sentences).
    cont = continuous_voices()
    continuous = [
        assemble_continuous([s], s, cont[k % len(cont)], stream.lexicon, nrng)
        for k, s in enumerate(test_sentences[:24])
    ]
    return {
        "heldout": [stream.example(u, verbatim=True) for u in heldout],
        "continuous": [stream.example(u, verbatim=True) for u in continuous],
        "train-voices": [stream.example(u, verbatim=True) for u in seen],
        "heldout-joined": [stream.example(u, verbatim=True) for u in joined],
    }


def start_lags(utts: list[Utterance], results: list[Any]) -> list[float]:
    """Aligned word start minus true start, for every word an edit alignment matches."""
    lags = []
    for u, r in zip(utts, results, strict=True):
        hyp = [w.word for w in r.words]
        sm = difflib.SequenceMatcher(a=u.verbatim, b=hyp, autojunk=False)
        for block in sm.get_matching_blocks():
            for k in range(block.size):
                lags.append(r.words[block.b + k].start - u.times[block.a + k][0])
    return lags


def calibrate_timings(out: Path, lexicon: Lexicon, voices: list[Voice], seed: int) -> float:
    """The model's output delay: median lag of aligned word starts behind the truth.

    Decodes 40 fresh sentences in the first six training voices (every other one as
    continuous speech) with no adjustment and
    returns the median lag in ms (10 ms steps, never negative), which goes into the
    model's ``serving_conf.timings_adjustment_ms``.
    """
    from serve_app.engine.model import load_model
    from serve_app.engine.options import DecodeOptions
    from serve_app.engine.transcriber import Request, Transcriber

    rng = random.Random(seed + 3)
    nrng = np.random.default_rng(seed + 3)
    utts = []
    for k in range(40):
        s = sentence(rng)
        voice = rng.choice(voices[:6])
        if k % 2:  # half continuous: the correction must suit both styles
            utts.append(assemble_continuous([s], s, voice, lexicon, nrng))
        else:
            utts.append(assemble(s, s, voice, lexicon, nrng))
    transcriber = Transcriber(load_model(str(out), device="cpu"))
    opts = DecodeOptions(decoding_mode="ctc_prefix_beam_search", timings_adjustment_ms=0.0)
    results = transcriber.transcribe_many([Request(u.audio, opts) for u in utts])
    lags = start_lags(utts, results)
    if not lags:
        print("calibration: no word was recognised; adjustment stays 0", flush=True)
        return 0.0
    lag_ms = statistics.median(lags) * 1000
    print(f"calibration: median start lag {lag_ms:+.0f} ms over {len(lags)} words", flush=True)
    return float(max(0, round(lag_ms / 10) * 10))


def recalibrate(out: Path, lexicon: Lexicon, voices: list[Voice], seed: int) -> float:
    """Re-measure a trained model folder's adjustment and write it into its config.

    The folder's config holds 0 while measuring (the decode asks for no adjustment
    too), so a calibration that stops half-way leaves no stale value behind.
    """
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["serving_conf"]["timings_adjustment_ms"] = 0.0
    write_config(out, config)
    adjustment = calibrate_timings(out, lexicon, voices, seed)
    config["serving_conf"]["timings_adjustment_ms"] = adjustment
    write_config(out, config)
    return adjustment
