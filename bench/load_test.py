#!/usr/bin/env python3
"""Service load test: batching on vs off, and the service against the bare engine.

Everything runs in this one process and its Ray workers, on 127.0.0.1:

1. Engine reference (before Serve starts, and again after it stops): the engine's
   ``Transcriber`` decodes the same clips (a) one at a time, giving the single-clip
   latency and batch-1 RTFx, and (b) in groups of up to ``--batch-on`` chunks, giving
   the engine RTFx at the batch size the service uses.
2. Serve starts (one Ray instance with its dashboard, CPU, one Transcriber replica with
   the same torch thread count as this process) from a declarative config PUT to
   Serve's REST API (``serve_app.deploy``, what ``serve deploy`` does), so batching
   settings are changed by a live ``user_config`` update, without a restart.
3. For each concurrency, two arms back to back (order alternates between
   concurrencies): batching on (``max_batch_size = --batch-on``) and off
   (``max_batch_size 1``). Each arm is a closed loop of N async httpx clients sending
   ``max(2 * N, --min-requests)`` requests (no new ones after ``--time-cap-s``), and
   reports audio-seconds and requests per second, p50/p95/p99 latency, errors, and
   the replica's observed mean batch size and padding efficiency (its ``stats()``
   counters, read before and after the arm).

    python -m bench.load_test --model models/tiny_random
    python -m bench.load_test --model /tmp/full_model --concurrency 1 4 16 --clip-range 2 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import (
    emit,
    free_ports,
    load_avg,
    local_ray,
    machine,
    md_table,
    mix_lengths,
    speech,
    wav_bytes,
)
from serve_app.deploy import deploy_config

APP = "reverb"
DEPLOY_TIMEOUT_S = 300


# --------------------------------------------------------------------------- clips


def make_clips(n: int, seed: int, low: float, high: float) -> list[tuple[float, np.ndarray]]:
    """(seconds, audio) in arrival order; the same list feeds the engine and every arm."""
    return [(s, speech(s, seed=seed + k)) for k, s in enumerate(mix_lengths(n, seed, low, high))]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# --------------------------------------------------------------------------- engine


def engine_reference(model_path: str, clips, mode: str, batch: int, singles: int) -> dict:
    """Bare-engine numbers on the same clips, in this process."""
    import torch

    from serve_app.engine.chunking import SAMPLE_RATE, plan_chunks
    from serve_app.engine.model import load_model
    from serve_app.engine.options import DecodeOptions
    from serve_app.engine.transcriber import Request, Transcriber

    transcriber = Transcriber(load_model(model_path, device="cpu"), max_audio_seconds=None)
    options = DecodeOptions(decoding_mode=mode)
    audio = [a for _, a in clips]
    transcriber.transcribe(audio[0][: 2 * SAMPLE_RATE], options)  # warm-up
    latencies = []
    for a in audio[:singles]:
        t0 = time.perf_counter()
        transcriber.transcribe(a, options)
        latencies.append(time.perf_counter() - t0)
    single_audio = sum(a.shape[0] for a in audio[:singles]) / SAMPLE_RATE
    groups, current, rows = [], [], 0
    for a in audio:
        n = len(plan_chunks(a.shape[0]))
        if current and rows + n > batch:
            groups.append(current)
            current, rows = [], 0
        current.append(a)
        rows += n
    groups.append(current)
    t0 = time.perf_counter()
    for group in groups:
        for out in transcriber.transcribe_many([Request(a, options) for a in group]):
            if isinstance(out, Exception):
                raise out
    batched_wall = time.perf_counter() - t0
    total_audio = sum(a.shape[0] for a in audio) / SAMPLE_RATE
    return {
        "torch_threads": torch.get_num_threads(),
        "single_latencies_s": latencies,
        "single_rtfx": single_audio / sum(latencies),
        "batched_rtfx": total_audio / batched_wall,
        "batched_groups": len(groups),
    }


# --------------------------------------------------------------------------- serve


def serve_config(model: str, max_batch_size: int, threads: int, wait_s: float, port: int) -> dict:
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": APP,
                "route_prefix": "/",
                "import_path": "serve_app.app:build_app",
                "args": {
                    "model": model,
                    "device": "cpu",
                    "num_cpus": threads,
                    "max_concurrent_requests": 256,
                    "max_audio_seconds": 600,
                },
                "deployments": [
                    {"name": "Ingress", "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0}},
                    {
                        "name": "Transcriber",
                        "user_config": {
                            "max_batch_size": max_batch_size,
                            "batch_wait_timeout_s": wait_s,
                        },
                        "ray_actor_options": {
                            "num_cpus": threads,
                            "num_gpus": 0,
                            "runtime_env": {"env_vars": env},
                        },
                    },
                ],
            }
        ],
    }


def apply_config(config: dict, dashboard_url: str, expect_batch: int) -> Any:
    """Deploy or update as ``serve deploy`` does; wait until the replica reports the
    requested ``max_batch_size``. Returns the Transcriber's handle."""
    from ray import serve

    deploy_config(config, dashboard_url=dashboard_url, timeout_s=DEPLOY_TIMEOUT_S)
    handle = serve.get_deployment_handle("Transcriber", app_name=APP)
    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if read_stats(handle).get("max_batch_size") == expect_batch:
                return handle
        except Exception:
            pass
        time.sleep(0.5)
    raise TimeoutError("the app did not reach the requested batching config")


def read_stats(handle) -> dict:
    """The replica's counters (``stats()``), resetting its peak-in-flight gauge."""
    return handle.stats.remote(reset_peak=True).result(timeout_s=60)


async def run_arm(url: str, clips, n_requests: int, concurrency: int, cap_s: float, mode: str):
    """Closed loop: ``concurrency`` clients, each sends the next request when done."""
    wavs = [wav_bytes(a) for _, a in clips]
    next_index = 0
    latencies: list[float] = []
    audio_done = 0.0
    errors: list[str] = []
    started = time.perf_counter()

    async def client(http) -> None:
        nonlocal next_index, audio_done
        while next_index < n_requests and time.perf_counter() - started < cap_s:
            i = next_index
            next_index += 1
            k = i % len(clips)
            t0 = time.perf_counter()
            try:
                r = await http.post(
                    "/v1/audio/transcriptions",
                    files={"file": ("clip.wav", wavs[k], "audio/wav")},
                    data={"decoding_mode": mode},
                )
                ok = r.status_code == 200
                if not ok:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except Exception as exc:
                ok = False
                errors.append(repr(exc))
            if ok:
                latencies.append(time.perf_counter() - t0)
                audio_done += clips[k][0]

    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=1800, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "requests": len(latencies) + len(errors),
        "ok": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:3],
        "wall_s": wall,
        "audio_s": audio_done,
        "audio_per_s": audio_done / wall,
        "requests_per_s": len(latencies) / wall,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "p99_s": percentile(latencies, 99),
    }


def diff_stats(before: dict, after: dict) -> dict:
    rows = after["rows"] - before["rows"]
    batches = after["batches"] - before["batches"]
    real = after["real_frames"] - before["real_frames"]
    padded = after["padded_frames"] - before["padded_frames"]
    return {
        "rows": rows,
        "batches": batches,
        "mean_batch": rows / batches if batches else 0.0,
        "max_batch_seen": max(
            (
                int(k)
                for k, v in after["rows_per_batch"].items()
                if v > before["rows_per_batch"].get(k, 0)
            ),
            default=0,
        ),
        "padding_efficiency": real / padded if padded else 1.0,
        "busy_s": after["decode_seconds"] - before["decode_seconds"],
        "restarted": after["pid"] != before["pid"],
    }


# --------------------------------------------------------------------------- report


def report_md(result: dict) -> str:
    cfg = result["config"]
    eng = result["engine"]
    parts = [
        f"Machine: {result['machine']}; load average at start {result['load_avg_start']}, "
        f"at end {result['load_avg_end']}.",
        f"Model `{cfg['model']}`, decoding_mode `{cfg['mode']}`, {len(result['clip_seconds'])} "
        f"clips of {cfg['clip_range'][0]}-{cfg['clip_range'][1]} s "
        f"(mean {statistics.mean(result['clip_seconds']):.1f} s); batching on = "
        f"max_batch_size {cfg['batch_on']}, off = 1; batch_wait_timeout_s {cfg['wait_s']}.",
        "",
        md_table(
            [
                "conc.",
                "batching",
                "requests (err)",
                "audio s/s",
                "req/s",
                "p50 s",
                "p95 s",
                "p99 s",
                "mean batch",
                "padding eff.",
                "gain on/off",
            ],
            [
                [
                    a["concurrency"],
                    "on" if a["max_batch_size"] > 1 else "off",
                    f"{a['load']['requests']} ({a['load']['errors']})",
                    f"{a['load']['audio_per_s']:.2f}",
                    f"{a['load']['requests_per_s']:.2f}",
                    f"{a['load']['p50_s']:.3f}",
                    f"{a['load']['p95_s']:.3f}",
                    f"{a['load']['p99_s']:.3f}",
                    f"{a['stats']['mean_batch']:.2f}",
                    f"{a['stats']['padding_efficiency']:.3f}",
                    f"{result['gain'][str(a['concurrency'])]:.2f}x"
                    if a["max_batch_size"] > 1
                    else "",
                ]
                for a in result["arms"]
            ],
        ),
        "",
        "Engine reference on the same clips, in this process (before Serve / after Serve):",
        "",
        md_table(
            ["measure", "before", "after", "mean"],
            [
                [
                    f"engine RTFx, groups of <= {cfg['batch_on']} chunks",
                    f"{eng[0]['batched_rtfx']:.2f}",
                    f"{eng[1]['batched_rtfx']:.2f}" if len(eng) > 1 else "",
                    f"{result['engine_batched_rtfx']:.2f}",
                ],
                [
                    f"engine RTFx, one clip at a time ({cfg['singles']} clips)",
                    f"{eng[0]['single_rtfx']:.2f}",
                    f"{eng[1]['single_rtfx']:.2f}" if len(eng) > 1 else "",
                    f"{result['engine_single_rtfx']:.2f}",
                ],
                [
                    "engine single-clip latency p95 s",
                    f"{percentile(eng[0]['single_latencies_s'], 95):.3f}",
                    f"{percentile(eng[1]['single_latencies_s'], 95):.3f}" if len(eng) > 1 else "",
                    f"{result['engine_single_p95_s']:.3f}",
                ],
            ],
        ),
        "",
        "Ratios:",
        "",
    ]
    parts += [f"- {k}: {v}" for k, v in result["ratios"].items()]
    return "\n".join(parts) + "\n"


def summarise(result: dict) -> None:
    eng = result["engine"]
    result["engine_batched_rtfx"] = statistics.mean(e["batched_rtfx"] for e in eng)
    result["engine_single_rtfx"] = statistics.mean(e["single_rtfx"] for e in eng)
    result["engine_single_p95_s"] = statistics.mean(
        percentile(e["single_latencies_s"], 95) for e in eng
    )
    by = {(a["concurrency"], a["max_batch_size"] > 1): a for a in result["arms"]}
    gain = {}
    for (c, on), arm in by.items():
        if on and (c, False) in by:
            gain[str(c)] = arm["load"]["audio_per_s"] / by[(c, False)]["load"]["audio_per_s"]
    result["gain"] = gain
    cfg = result["config"]
    ratios: dict[str, str] = {}
    for c, g in gain.items():
        ratios[f"batching gain (audio s/s on / off) at concurrency {c}"] = f"{g:.2f}x"
    on_levels = [c for c, on in by if on]
    hi = 16 if 16 in on_levels else max(on_levels, default=None)
    if hi is not None:
        svc = by[(hi, True)]["load"]["audio_per_s"]
        ratios[
            f"service RTFx (concurrency {hi}, batching on) / engine RTFx (<= {cfg['batch_on']})"
        ] = (
            f"{svc:.2f} / {result['engine_batched_rtfx']:.2f} = "
            f"{svc / result['engine_batched_rtfx']:.2f}"
        )
    if (1, True) in by:
        p95 = by[(1, True)]["load"]["p95_s"]
        bound = 1.2 * result["engine_single_p95_s"] + 0.030
        ratios["p95 at concurrency 1 vs 1.2 x engine single-clip p95 + 30 ms"] = (
            f"{p95:.3f} s vs {bound:.3f} s ({'met' if p95 <= bound else 'not met'}; "
            f"ratio service/engine p95 {p95 / result['engine_single_p95_s']:.2f})"
        )
        svc1 = by[(1, True)]["load"]["audio_per_s"]
        ratios["service RTFx at concurrency 1 / engine one-clip RTFx"] = (
            f"{svc1 / result['engine_single_rtfx']:.2f}"
        )
    ratios["errors (all arms)"] = str(sum(a["load"]["errors"] for a in result["arms"]))
    result["ratios"] = ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Reverb model folder")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--batch-on", type=int, default=16, help="max_batch_size when on")
    parser.add_argument("--wait-s", type=float, default=0.01, help="batch_wait_timeout_s")
    parser.add_argument(
        "--mode",
        default="attention_rescoring",
        help="decoding_mode to request (default: the service's default mode)",
    )
    parser.add_argument("--clip-range", nargs=2, type=float, default=[2.0, 60.0])
    parser.add_argument("--clips", type=int, default=32, help="distinct clips (cycled)")
    parser.add_argument("--min-requests", type=int, default=16)
    parser.add_argument("--time-cap-s", type=float, default=60.0, help="per arm")
    parser.add_argument(
        "--singles",
        type=int,
        default=0,
        help="clips for the engine single-clip latency (default: the concurrency-1 arm's "
        "request count, so both p95s cover the same clips)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for the engine reference and the replica (default: torch's)",
    )
    parser.add_argument("--no-engine-after", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # A timeout's SIGTERM must still run the finally below, which stops Serve and Ray.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    model = str(Path(args.model).resolve())

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    result: dict[str, Any] = {
        "machine": machine(),
        "load_avg_start": load_avg(),
        "config": {**vars(args), "json": None, "md": None},
        "arms": [],
        "engine": [],
    }
    clips = make_clips(args.clips, args.seed, *args.clip_range)
    result["clip_seconds"] = [s for s, _ in clips]
    singles = min(args.singles or max(2, args.min_requests), len(clips))
    result["config"]["singles"] = singles
    result["engine"].append(engine_reference(model, clips, args.mode, args.batch_on, singles))
    print("engine before:", {k: v for k, v in result["engine"][0].items() if "lat" not in k})

    with local_ray(num_cpus=max(8, 2 * threads)) as dashboard_url:
        (http_port,) = free_ports(1)  # after Ray holds its dashboard port
        url = f"http://127.0.0.1:{http_port}"
        for n, c in enumerate(args.concurrency):
            order = [args.batch_on, 1] if n % 2 == 0 else [1, args.batch_on]
            for mbs in order:
                config = serve_config(model, mbs, threads, args.wait_s, http_port)
                handle = apply_config(config, dashboard_url, mbs)
                asyncio.run(run_arm(url, clips, 2, min(c, 2), 600, args.mode))  # warm
                requests = max(2 * c, args.min_requests)
                before = read_stats(handle)
                load = asyncio.run(run_arm(url, clips, requests, c, args.time_cap_s, args.mode))
                after = read_stats(handle)
                arm = {
                    "concurrency": c,
                    "max_batch_size": mbs,
                    "load": load,
                    "stats": diff_stats(before, after),
                    "peak_chunks_in_flight": after["peak_chunks_in_flight"],
                }
                result["arms"].append(arm)
                print(
                    f"c={c} mbs={mbs}: {load['audio_per_s']:.2f} audio s/s, "
                    f"p95 {load['p95_s']:.3f} s, errors {load['errors']}, "
                    f"mean batch {arm['stats']['mean_batch']:.2f}",
                    flush=True,
                )
    if not args.no_engine_after:
        result["engine"].append(engine_reference(model, clips, args.mode, args.batch_on, singles))
    result["load_avg_end"] = load_avg()
    summarise(result)
    emit(report_md(result), args.md, args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
