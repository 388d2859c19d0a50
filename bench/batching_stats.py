#!/usr/bin/env python3
"""How full do batches get? Fire concurrent HTTP clients and read the replica's counters.

Each of ``--clients`` clients sends ``--rounds`` requests back to back (speech-like
clips of 2-10 s, different seeds), all at once over HTTP. Before and after, the
Transcriber's ``stats()`` handle method is read, and the difference gives rows
(chunks), batches, the mean and largest batch, and padding efficiency. Timing plays
no part in the numbers except through how requests happen to overlap.

    # start the app here on CPU with a model folder, measure, shut down
    python -m bench.batching_stats --start models/tiny_random --clients 16

    # or measure an app that is already running (`serve run configs/local.yaml`)
    python -m bench.batching_stats --clients 16 --url http://127.0.0.1:8765

With one Transcriber replica the counters cover every chunk; with several, a stats
call reaches one replica, so run it against a single-replica deployment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from urllib.parse import urlsplit

import httpx

from bench._common import speech, wav_bytes

APP_NAME = "reverb"


def clips(clients: int, rounds: int) -> list[list[bytes]]:
    """Each client's clips, made before the clock starts: 2-10 s, all different."""
    return [
        [wav_bytes(speech(2 + (i * 100 + r) * 7919 % 9, i * 100 + r)) for r in range(rounds)]
        for i in range(clients)
    ]


async def client(http: httpx.AsyncClient, audios: list[bytes], mode: str | None) -> None:
    data = {"decoding_mode": mode} if mode else {}
    for audio in audios:
        response = await http.post(
            "/v1/audio/transcriptions",
            files={"file": ("clip.wav", audio, "audio/wav")},
            data=data,
        )
        response.raise_for_status()


async def load(url: str, audios: list[list[bytes]], mode: str | None) -> float:
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=len(audios))
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(http, mine, mode) for mine in audios))
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", default=None, help="decoding_mode (default: the server's)")
    parser.add_argument("--url", default="http://127.0.0.1:8765")
    parser.add_argument("--app", default=APP_NAME)
    parser.add_argument("--start", metavar="MODEL", help="deploy the app here on CPU first")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 turns on token auth
    import ray
    from ray import serve

    if args.start:
        from serve_app.app import build_app

        ray.init(include_dashboard=False, log_to_driver=False)
        port = urlsplit(args.url).port or 8765
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"model": args.start, "device": "cpu"}), name=args.app)
    else:
        ray.init(address="auto", namespace="serve", log_to_driver=False)
    try:
        return measure(args, serve.get_deployment_handle("Transcriber", app_name=args.app).stats)
    finally:
        if args.start:
            serve.shutdown()
        ray.shutdown()


def measure(args: argparse.Namespace, stats) -> int:
    """Run the load between two ``stats()`` reads and print what the counters say."""
    audios = clips(args.clients, args.rounds)
    asyncio.run(load(args.url, audios[:2], args.mode))  # warm-up, not counted
    before = stats.remote(reset_peak=True).result()
    seconds = asyncio.run(load(args.url, audios, args.mode))
    after = stats.remote().result()
    if after["pid"] != before["pid"]:
        print("the replica restarted during the run; numbers are meaningless")
        return 1

    rows = after["rows"] - before["rows"]
    batches = after["batches"] - before["batches"]
    sizes = {
        int(k): v - before["rows_per_batch"].get(k, 0) for k, v in after["rows_per_batch"].items()
    }
    real = after["real_frames"] - before["real_frames"]
    padded = after["padded_frames"] - before["padded_frames"]
    print(f"{args.clients} clients x {args.rounds} requests in {seconds:.1f} s")
    print(f"rows (chunks) {rows}, batches {batches}, mean batch size {rows / batches:.2f}")
    print(
        f"largest batch {max(k for k, v in sizes.items() if v)} "
        f"(max_batch_size {after['max_batch_size']})"
    )
    print("batches by size:", {k: v for k, v in sorted(sizes.items()) if v})
    busy = after["decode_seconds"] - before["decode_seconds"]
    print(f"peak chunks held by the replica {after['peak_chunks_in_flight']}")
    print(f"padding efficiency {real / padded:.2f}")
    print(f"transcriber busy {busy:.1f} s of {seconds:.1f} s ({100 * busy / seconds:.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
