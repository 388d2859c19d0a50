#!/usr/bin/env python3
"""Engine benchmark: RTFx by batch size and mode, padding efficiency, and a profile.

Three parts, all in one process with the model loaded once:

1. Padding efficiency (no model run): a mix of clip lengths (2-60 s, log-uniform,
   cut on the engine's 2051-frame grid) is sent in arrival order in batches of B
   chunks; each batch is packed by ``BatchDecoder.pack`` (length-sorted) and by the
   same cost model without sorting (arrival order). Efficiency = real / padded frames.
2. Where time goes: one batch per decoding mode under cProfile, aggregated by the
   engine's stages (features, encoder, CTC posteriors, CTC search, rescoring,
   alignment/words, rest), plus the profiler's overhead (the same batch unprofiled).
3. Batch sweep: RTFx (audio seconds per wall second) of ``BatchDecoder.decode`` at
   each batch size and mode, on speech-like clips of ``--clip-seconds``; cells are
   interleaved in rounds (order reversed every other round) so a noisy shared machine
   hits all cells alike; each cell reports its median and the speed-up over batch 1.
   ``--budget-s`` caps the run: a sweep cell predicted to overrun it is skipped.

    python -m bench.engine_sweep --model models/tiny_random
    python -m bench.engine_sweep --model /tmp/full_model --budget-s 600 --clip-seconds 4 6
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench._common import emit, load_avg, machine, md_table, mix_lengths, speech
from serve_app.engine.chunking import SAMPLE_RATE, plan_chunks
from serve_app.engine.decoder import BatchDecoder, ChunkJob, _Row
from serve_app.engine.options import DecodeOptions
from serve_app.engine.packing import pack_cuts
from serve_app.engine.transcriber import chunk_jobs

DEFAULT_MODES = ["ctc_greedy_search", "ctc_prefix_beam_search", "attention_rescoring"]
DEFAULT_BATCH_SIZES = [1, 2, 4, 8, 16, 32]
STAGES = ["features", "encoder", "ctc_posteriors", "ctc_search", "rescoring", "alignment"]


# --------------------------------------------------------------------------- padding


def mix_chunk_frames(n_clips: int, seed: int) -> list[int]:
    """Fbank frames of every chunk of the mix, requests in arrival order."""
    frames: list[int] = []
    for seconds in mix_lengths(n_clips, seed):
        frames += [p.num_frames for p in plan_chunks(round(seconds * SAMPLE_RATE))]
    return frames


def pack_in_order(lengths: list[int], max_padded: int, forward_cost: int) -> list[list[int]]:
    """``BatchDecoder.pack``'s cut points without its length sort: the lengths per forward."""
    return [lengths[c.start : c.stop] for c in pack_cuts(lengths, max_padded, forward_cost)]


PACKING_JOB = ChunkJob(np.zeros(0, np.float32), 0, DecodeOptions())
"""Packing reads only a row's length and its options' decoding_chunk_size."""


def padding_table(decoder: BatchDecoder, n_clips: int, batch_sizes: list[int], seed: int) -> dict:
    frames = mix_chunk_frames(n_clips, seed)
    out = {"clips": n_clips, "chunks": len(frames), "rows": []}
    for bs in batch_sizes:
        real = padded_sorted = padded_arrival = padded_one = fw_sorted = fw_arrival = 0
        for start in range(0, len(frames), bs):
            batch = frames[start : start + bs]
            rows = [_Row(i, PACKING_JOB, torch.empty((f, 0))) for i, f in enumerate(batch)]
            subs = decoder.pack(rows)
            real += sum(batch)
            padded_sorted += sum(len(s) * max(r.feats.shape[0] for r in s) for s in subs)
            fw_sorted += len(subs)
            arrival = pack_in_order(batch, decoder.max_padded_frames, decoder.forward_cost_frames)
            padded_arrival += sum(len(s) * max(s) for s in arrival)
            fw_arrival += len(arrival)
            padded_one += len(batch) * max(batch)
        out["rows"].append(
            {
                "batch_size": bs,
                "sorted_efficiency": real / padded_sorted,
                "arrival_efficiency": real / padded_arrival,
                "one_forward_efficiency": real / padded_one,
                "sorted_forwards": fw_sorted,
                "arrival_forwards": fw_arrival,
                "batches": math.ceil(len(frames) / bs),
            }
        )
    return out


# --------------------------------------------------------------------------- profile


def _stage(key: tuple[str, int, str]) -> str | None:
    path, _line, name = key
    if path.endswith("serve_app/engine/decoder.py"):
        return {
            "features": "features",
            "_words": "alignment",
            "decode": "total",
        }.get(name)
    if path.endswith("serve_app/engine/search.py") and name == "search_group":
        return "search"
    if name == "_forward_encoder":
        return "encoder"
    if name == "ctc_logprobs":
        return "ctc_posteriors"
    if path.endswith("wenet/transformer/search.py") and name == "attention_rescoring":
        return "rescoring"
    if path.endswith("serve_app/engine/rescoring.py") and name == "batched_attention_rescoring":
        return "rescoring"
    return None


def _finish(totals: dict[str, float]) -> dict[str, float]:
    """CTC search = the search step less the rescoring it contains; other = the rest."""
    totals["ctc_search"] = totals.pop("search") - totals["rescoring"]
    totals["other"] = totals["total"] - sum(totals[s] for s in STAGES)
    return totals


def profile_decode(decoder: BatchDecoder, jobs: list[ChunkJob]) -> dict:
    """Seconds per stage for one decode, two ways: cProfile cumulative time of each
    stage's functions, and wall-clock timers wrapped around the same functions (next to
    no overhead, so Python-heavy stages are not inflated as they are under cProfile)."""
    started = time.perf_counter()
    decoder.decode(jobs)
    plain = time.perf_counter() - started
    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.enable()
    decoder.decode(jobs)
    prof.disable()
    profiled = time.perf_counter() - started
    totals = dict.fromkeys(["features", "encoder", "ctc_posteriors", "search", "rescoring"], 0.0)
    totals |= {"alignment": 0.0, "total": 0.0}
    for key, (_cc, _nc, _tt, ct, _callers) in pstats.Stats(prof).stats.items():
        stage = _stage(key)
        if stage:
            totals[stage] += ct
    timers, timed = time_stages(decoder, jobs)
    return {
        "unprofiled_s": plain,
        "profiled_s": profiled,
        "stages_s": _finish(totals),
        "timed_s": timed,
        "timer_stages_s": timers,
    }


def time_stages(decoder: BatchDecoder, jobs: list[ChunkJob]) -> tuple[dict[str, float], float]:
    """Wrap each stage's function with a perf_counter timer for one decode."""
    from wenet.transformer import search

    import serve_app.engine.decoder as decoder_module
    import serve_app.engine.search as search_module
    from serve_app.engine.search import search_group

    totals = dict.fromkeys(["features", "encoder", "ctc_posteriors", "search", "rescoring"], 0.0)
    totals |= {"alignment": 0.0, "total": 0.0}

    def timed(stage, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[stage] += time.perf_counter() - t0

        return wrapper

    inner = decoder.model.model
    patches = [
        (decoder, "features", "features"),
        (decoder, "_words", "alignment"),
        (inner, "_forward_encoder", "encoder"),
        (inner, "ctc_logprobs", "ctc_posteriors"),
    ]
    for obj, attr, stage in patches:
        object.__setattr__(obj, attr, timed(stage, getattr(obj, attr)))
    original = search.attention_rescoring
    search.attention_rescoring = timed("rescoring", original)
    batched = search_module.batched_attention_rescoring
    search_module.batched_attention_rescoring = timed("rescoring", batched)
    decoder_module.search_group = timed("search", search_group)
    try:
        started = time.perf_counter()
        decoder.decode(jobs)
        wall = time.perf_counter() - started
    finally:
        search.attention_rescoring = original
        search_module.batched_attention_rescoring = batched
        decoder_module.search_group = search_group
        for obj, attr, _ in patches:
            delattr(obj, attr)
    totals["total"] = wall
    return _finish(totals), wall


# --------------------------------------------------------------------------- sweep


def make_jobs(clips: list[np.ndarray], mode: str) -> list[ChunkJob]:
    options = DecodeOptions(decoding_mode=mode)
    return [job for clip in clips for job in chunk_jobs(clip, options)]


def sweep(
    decoder: BatchDecoder,
    pool: list[np.ndarray],
    modes: list[str],
    batch_sizes: list[int],
    rounds: int,
    deadline: float,
) -> dict:
    """RTFx samples per (mode, batch size), cells interleaved across rounds; a cell
    predicted to end after ``deadline`` (a ``perf_counter`` time) is skipped."""
    started = time.perf_counter()
    samples: dict[str, dict[int, list[float]]] = {m: {b: [] for b in batch_sizes} for m in modes}
    skipped: list[str] = []
    sec_per_audio: dict[str, float] = {}
    for r in range(rounds):
        order = batch_sizes if r % 2 == 0 else batch_sizes[::-1]
        for mode in modes:
            for bs in order:
                clips = pool[:bs]
                audio = sum(c.shape[0] for c in clips) / SAMPLE_RATE
                predicted = sec_per_audio.get(mode, 0.0) * audio
                first_of_mode = mode not in sec_per_audio
                if not first_of_mode and time.perf_counter() + predicted > deadline:
                    skipped.append(f"{mode}@{bs}#r{r + 1}")
                    continue
                jobs = make_jobs(clips, mode)
                t0 = time.perf_counter()
                outcomes, _ = decoder.decode(jobs)
                wall = time.perf_counter() - t0
                errors = [o for o in outcomes if isinstance(o, Exception)]
                if errors:
                    raise RuntimeError(f"{mode} batch {bs} failed: {errors[0]!r}")
                samples[mode][bs].append(audio / wall)
                sec_per_audio[mode] = max(sec_per_audio.get(mode, 0.0), wall / audio)
    return {"samples": samples, "skipped": skipped, "seconds": time.perf_counter() - started}


# --------------------------------------------------------------------------- report


def report_md(result: dict) -> str:
    cfg = result["config"]
    parts = [
        f"Machine: {result['machine']}; load average at start {result['load_avg_start']}, "
        f"at end {result['load_avg_end']}.",
        f"Model: `{cfg['model']}` ({result['parameters'] / 1e6:.1f}M parameters).",
        "",
        f"**Batch sweep** (clips {cfg['clip_seconds'][0]}-{cfg['clip_seconds'][1]} s, "
        f"median of up to {cfg['rounds']} interleaved rounds; speed-up = RTFx / RTFx at "
        "batch 1 of the same mode):",
        "",
    ]
    rows = []
    for mode, cells in result["sweep"]["samples"].items():
        base = statistics.median(cells[min(cells)]) if cells[min(cells)] else None
        for bs, values in cells.items():
            if not values:
                rows.append([mode, bs, "skipped", "", ""])
                continue
            med = statistics.median(values)
            speed = f"{med / base:.2f}x" if base else ""
            rows.append([mode, bs, f"{med:.1f}", speed, len(values)])
    parts += [md_table(["mode", "batch", "RTFx", "speed-up vs b=1", "n"], rows), ""]
    if result["sweep"]["skipped"]:
        parts += [f"Skipped for the budget: {len(result['sweep']['skipped'])} cell-rounds.", ""]

    pad = result["padding"]
    parts += [
        f"**Padding efficiency** (real/padded frames; {pad['clips']} clips of 2-60 s, "
        f"{pad['chunks']} chunks, batches of B chunks in arrival order):",
        "",
        md_table(
            [
                "B",
                "sorted (engine pack)",
                "arrival order",
                "one forward, no packing",
                "forwards sorted/arrival",
            ],
            [
                [
                    r["batch_size"],
                    f"{r['sorted_efficiency']:.3f}",
                    f"{r['arrival_efficiency']:.3f}",
                    f"{r['one_forward_efficiency']:.3f}",
                    f"{r['sorted_forwards']}/{r['arrival_forwards']}",
                ]
                for r in pad["rows"]
            ],
        ),
        "",
        f"**Where time goes** (cProfile cumulative time per stage, one batch of "
        f"{cfg['profile_batch']} clips; share of the profiled decode):",
        "",
    ]
    parts += [_stage_table(result, "stages_s", "profiled_s", "profiler overhead"), ""]
    parts += [
        "Same batch, wall-clock timers wrapped around the same functions (share of the "
        "timed decode; overhead = timed / unprofiled wall):",
        "",
    ]
    parts += [_stage_table(result, "timer_stages_s", "timed_s", "timer overhead"), ""]
    return "\n".join(parts)


def _stage_table(result: dict, stages_key: str, wall_key: str, overhead: str) -> str:
    """Share of each stage per mode, and the measuring method's overhead."""
    rows = []
    for mode, prof in result["profile"].items():
        st = prof[stages_key]
        total = st["total"] or 1.0
        rows.append(
            [mode]
            + [f"{100 * st[s] / total:.1f}%" for s in [*STAGES, "other"]]
            + [f"{prof[wall_key] / prof['unprofiled_s']:.2f}x"]
        )
    return md_table(["mode", *STAGES, "other", overhead], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Reverb model folder")
    parser.add_argument("--modes", nargs="+", default=DEFAULT_MODES)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=DEFAULT_BATCH_SIZES)
    parser.add_argument("--clip-seconds", nargs=2, type=float, default=[4.0, 6.0])
    parser.add_argument("--rounds", type=int, default=3, help="most samples per cell")
    parser.add_argument(
        "--budget-s", type=float, default=300.0, help="cap on the whole run (after loading)"
    )
    parser.add_argument("--profile-batch", type=int, default=8, help="0 skips the profile")
    parser.add_argument("--mix-clips", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="write all numbers here")
    parser.add_argument("--md", type=Path, help="write the markdown tables here")
    args = parser.parse_args(argv)

    from serve_app.engine.model import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = load_avg()
    model = load_model(args.model, device="cpu")
    deadline = time.perf_counter() + args.budget_s
    decoder = BatchDecoder(model)
    rng = np.random.default_rng(args.seed)
    lo, hi = args.clip_seconds
    pool = [
        speech(round(float(rng.uniform(lo, hi)), 2), seed=args.seed + 1000 + k)
        for k in range(max(max(args.batch_sizes), args.profile_batch))
    ]
    for mode in args.modes:  # warm-up: allocator, lazy imports, first-call paths
        decoder.decode(make_jobs(pool[:2], mode))

    result: dict = {
        "machine": machine(),
        "load_avg_start": load_start,
        "parameters": model.num_parameters(),
        "config": {**vars(args), "json": None, "md": None},
        "padding": padding_table(decoder, args.mix_clips, args.batch_sizes, args.seed),
    }
    result["profile"] = {}
    if args.profile_batch:
        for mode in args.modes:
            result["profile"][mode] = profile_decode(
                decoder, make_jobs(pool[: args.profile_batch], mode)
            )
    result["sweep"] = sweep(decoder, pool, args.modes, args.batch_sizes, args.rounds, deadline)
    result["load_avg_end"] = load_avg()
    emit(report_md(result), args.md, args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
