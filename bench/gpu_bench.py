#!/usr/bin/env python3
"""GPU engine benchmark: fp32 vs bf16 vs fp16 autocast, batch sweep, RTFx and memory.

Self-contained, one short run (a few minutes on an H200): builds Reverb's full-size
architecture with random weights (``scripts.make_test_model``) in a
temporary folder, loads it with the engine, and decodes batches of speech-like
20.5 s chunks (Rev's chunk grid, the worst case for memory) and shorter clips with
``BatchDecoder.decode`` under each precision. For every (precision, batch) cell it
records RTFx (audio seconds per wall second, median of ``--repeats``, after a
warm-up), ``torch.cuda.max_memory_allocated`` and how many rows' text differs from
fp32's (random weights make this a rough sensitivity signal, not a WER). Cells are
interleaved across precisions within each repeat. Writes ``gpu_bench.json`` and
``gpu_bench.md`` to ``--out``.

    python -m bench.gpu_bench --out "$OUT"                 # on the GPU machine
    python -m bench.gpu_bench --smoke --out /tmp/gpu_smoke  # tiny model on CPU, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench._common import speech
from scripts import make_test_model
from serve_app.engine.features import SAMPLE_RATE

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", dtype=torch.bfloat16)  # smoke mode: CPU autocast is bf16 only


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_cell(decoder, jobs, device, dtype, repeats: int) -> dict:
    from serve_app.engine.decoder import ChunkResult

    audio = sum(j.samples.shape[0] for j in jobs) / SAMPLE_RATE
    times, texts, errors = [], None, 0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        with autocast(device, dtype):
            outcomes, _ = decoder.decode(jobs)
        sync(device)
        times.append(time.perf_counter() - t0)
        errors = sum(not isinstance(o, ChunkResult) for o in outcomes)
        texts = [o.text if isinstance(o, ChunkResult) else repr(o)[:80] for o in outcomes]
    wall = statistics.median(times)
    return {
        "audio_s": audio,
        "wall_s": wall,
        "rtfx": audio / wall,
        "max_memory_mib": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        "errors": errors,
        "texts": texts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for json + md")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, seconds")
    parser.add_argument("--model", help="use this model folder instead of building one")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 8, 16, 32, 64])
    parser.add_argument("--chunk-seconds", type=float, default=20.5)
    parser.add_argument("--mode", default="attention_rescoring")
    parser.add_argument("--modes-extra", nargs="*", default=["ctc_greedy_search"])
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=360.0, help="cap on the sweep")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_sizes = [1, 2]
        args.chunk_seconds = min(args.chunk_seconds, 3.0)
        args.repeats = 1
        args.precisions = [p for p in args.precisions if p in ("fp32", "bf16")]
        args.modes_extra = []
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu" and not args.smoke:
        print("no CUDA device: run with --smoke for the CPU check", file=sys.stderr)
        return 2

    from serve_app.engine.decoder import BatchDecoder, ChunkJob
    from serve_app.engine.model import load_model
    from serve_app.engine.options import DecodeOptions

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model
        if folder is None:
            size = "tiny" if args.smoke else "full"
            folder = str(make_test_model.make_model(size, Path(tmp) / size))
        build_s = time.perf_counter() - started
        model = load_model(folder, device=str(device))
    decoder = BatchDecoder(model, max_padded_frames=10**9)  # one forward per batch
    n = max(args.batch_sizes)
    samples = round(args.chunk_seconds * SAMPLE_RATE)
    clips = [speech(samples / SAMPLE_RATE, seed=k) for k in range(n)]

    def jobs(bs: int, mode: str) -> list[ChunkJob]:
        opts = DecodeOptions(decoding_mode=mode)
        return [ChunkJob(c, 0, opts) for c in clips[:bs]]

    for prec in args.precisions:  # warm-up: kernels, autotuning, allocator
        run_cell(decoder, jobs(min(2, n), args.mode), device, PRECISIONS[prec], 1)

    deadline = time.perf_counter() + args.budget_s
    cells: list[dict] = []
    reference: dict[tuple[str, int], list[str]] = {}
    skipped: list[str] = []
    for mode in [args.mode, *args.modes_extra]:
        for bs in args.batch_sizes:
            for prec in args.precisions:
                if time.perf_counter() > deadline:
                    skipped.append(f"{mode}/{bs}/{prec}")
                    continue
                try:
                    cell = run_cell(decoder, jobs(bs, mode), device, PRECISIONS[prec], args.repeats)
                except torch.cuda.OutOfMemoryError as exc:
                    cell = {"oom": str(exc)[:200], "rtfx": None, "max_memory_mib": None}
                    torch.cuda.empty_cache()
                texts = cell.pop("texts", None)
                if prec == "fp32" and texts is not None:
                    reference[(mode, bs)] = texts
                ref = reference.get((mode, bs))
                cell["rows_differing_from_fp32"] = (
                    sum(a != b for a, b in zip(texts, ref, strict=True))
                    if texts is not None and ref is not None
                    else None
                )
                cells.append({"mode": mode, "batch": bs, "precision": prec, **cell})
                print(json.dumps(cells[-1]), flush=True)

    result = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (smoke)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "parameters": model.num_parameters(),
        "model_build_s": build_s,
        "config": {**vars(args), "out": str(args.out)},
        "cells": cells,
        "skipped": skipped,
        "total_s": time.perf_counter() - started,
    }
    (args.out / "gpu_bench.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"Device: {result['device']}, torch {result['torch']}, "
        f"{result['parameters'] / 1e6:.0f}M parameters, chunks of {args.chunk_seconds} s, "
        f"median of {args.repeats}; speed-up is RTFx over fp32 at the same batch.",
        "",
        "| mode | batch | precision | RTFx | speed-up vs fp32 | max mem MiB | rows != fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    fp32 = {(c["mode"], c["batch"]): c["rtfx"] for c in cells if c["precision"] == "fp32"}
    for c in cells:
        base = fp32.get((c["mode"], c["batch"]))
        speed = f"{c['rtfx'] / base:.2f}x" if c.get("rtfx") and base else ""
        mem = f"{c['max_memory_mib']:.0f}" if c.get("max_memory_mib") else "n/a"
        rtfx = f"{c['rtfx']:.1f}" if c.get("rtfx") else "OOM"
        lines.append(
            f"| {c['mode']} | {c['batch']} | {c['precision']} | {rtfx} | {speed} | {mem} | "
            f"{c.get('rows_differing_from_fp32')} |"
        )
    if skipped:
        lines += ["", f"Skipped for the budget: {', '.join(skipped)}"]
    (args.out / "gpu_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
