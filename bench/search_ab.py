#!/usr/bin/env python3
"""Before/after for the batched search: wenet's per-row Python vs the tensor search.

The same encoder output and CTC posteriors (computed once per batch) go through
``search_group`` twice per round, in alternating order: once as a request with
``word_timestamps="rev"`` (wenet's ``ctc_prefix_beam_search`` and, for rescoring, its
per-row ``attention_rescoring``: the engine before this change) and once with the
default ``"aligned"`` (``prefix_search`` + ``rescoring``). It reports the search's
audio-seconds per second for each, their ratio, and whether the two give the same
tokens on every row.

    python -m bench.search_ab --model models/tiny_random --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from bench._common import emit, load_avg, machine, md_table, speech
from serve_app.engine.decoder import BatchDecoder
from serve_app.engine.model import load_model
from serve_app.engine.options import DecodeOptions
from serve_app.engine.search import search_group

MODES = ["ctc_prefix_beam_search", "attention_rescoring"]


def encode(model, decoder: BatchDecoder, clips: list, verbatimicity: float):
    feats = [decoder.features(c) for c in clips]
    lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.int32)
    cat = torch.tensor([[verbatimicity, 1 - verbatimicity]] * len(clips))
    with torch.inference_mode():
        enc, mask = model.model._forward_encoder(
            pad_sequence(feats, batch_first=True), lens, -1, -1, False, cat_embs=cat
        )
        enc_lens = mask.squeeze(1).sum(1)
        probs = model.model.ctc_logprobs(enc, 0.0, model.blank_id)
    return enc, mask, enc_lens, probs, cat


def timed_search(model, opts, batch) -> tuple[float, list[list[int]]]:
    enc, mask, enc_lens, probs, cat = batch
    idx = list(range(enc.shape[0]))
    with torch.inference_mode():
        t0 = time.perf_counter()
        hyps = search_group(model, opts, idx, enc, mask, enc_lens, probs, cat)
        return time.perf_counter() - t0, [h.tokens for h in hyps]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--beam-size", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--md", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    decoder = BatchDecoder(model)
    started = load_avg()
    rows = []
    for mode in MODES:
        for bs in args.batch_sizes:
            clips = [speech(args.clip_seconds, seed=100 + k) for k in range(bs)]
            batch = encode(model, decoder, clips, 1.0)
            audio_s = bs * args.clip_seconds
            times: dict[str, list[float]] = {"rev": [], "aligned": []}
            tokens: dict[str, list] = {}
            for r in range(args.rounds):
                order = ["rev", "aligned"] if r % 2 == 0 else ["aligned", "rev"]
                for style in order:
                    opts = DecodeOptions(
                        decoding_mode=mode, beam_size=args.beam_size, word_timestamps=style
                    )
                    dt, toks = timed_search(model, opts, batch)
                    times[style].append(dt)
                    tokens[style] = toks
            before = audio_s / statistics.median(times["rev"])
            after = audio_s / statistics.median(times["aligned"])
            same = sum(a == b for a, b in zip(tokens["rev"], tokens["aligned"], strict=True))
            rows.append(
                [
                    mode,
                    bs,
                    f"{before:.1f}",
                    f"{after:.1f}",
                    f"{after / before:.2f}x",
                    f"{same}/{bs}",
                ]
            )
            print(rows[-1], flush=True)
    table = md_table(
        [
            "mode",
            "batch",
            "search RTFx, wenet per row (before)",
            "search RTFx, tensor batch (after)",
            "after / before",
            "same tokens",
        ],
        rows,
    )
    text = (
        f"Machine: {machine()}; load average at start {started}, at end {load_avg()}.\n"
        f"Model: `{args.model}`; {args.clip_seconds:.0f} s speech-like clips, beam "
        f"{args.beam_size}, median of {args.rounds} alternating rounds; search time only "
        "(encoder output shared).\n\n" + table + "\n"
    )
    emit(text, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
