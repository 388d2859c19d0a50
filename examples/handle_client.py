#!/usr/bin/env python3
"""Transcribe through the Serve app's Python handle instead of HTTP.

Code running in the same Ray cluster (a driver script, a batch job, another Serve
deployment) can skip HTTP and multipart: ``serve.get_app_handle("reverb")`` returns
the Ingress handle, and ``transcribe(audio, **options)`` returns the same
``Transcript`` the HTTP API renders. ``audio`` is an encoded file (bytes) or a 16 kHz
mono float32 array in [-1, 1].

    # against a running app (e.g. `serve run configs/local.yaml` in another shell)
    python examples/handle_client.py recording.wav --decoding-mode ctc_prefix_beam_search

    # or start the app in this process first (CPU, any Reverb model folder)
    python examples/handle_client.py recording.wav --start models/tiny_random

Clusters that ``serve run`` starts use Ray's token auth; a driver on the same machine
picks the token up automatically (or set RAY_AUTH_MODE=disabled for both).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import ray
from ray import serve

APP_NAME = "reverb"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", type=Path, help="an audio file (wav, flac, mp3, ogg, m4a)")
    parser.add_argument("--app", default=APP_NAME, help="Serve application name")
    parser.add_argument("--start", metavar="MODEL", help="deploy the app here with this model")
    parser.add_argument("--decoding-mode", default=None)
    parser.add_argument("--verbatimicity", type=float, default=None)
    return parser.parse_args(argv)


async def transcribe_many(handle, audio: bytes, options: dict) -> None:
    """Handles are async-friendly: several calls in flight share the model's batches."""
    verbatim, clean = await asyncio.gather(
        handle.transcribe.remote(audio, **{**options, "verbatimicity": 1.0}),
        handle.transcribe.remote(audio, **{**options, "verbatimicity": 0.0}),
    )
    print(f"verbatim: {verbatim.text}\nclean:    {clean.text}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = {
        key: value
        for key, value in (
            ("decoding_mode", args.decoding_mode),
            ("verbatimicity", args.verbatimicity),
        )
        if value is not None
    }
    if args.start:
        from serve_app.app import build_app

        serve.run(build_app({"model": args.start, "device": "cpu"}), name=args.app)
    else:
        # Join the cluster `serve run` started; without this Ray would start a new one.
        ray.init(address="auto", namespace="serve")
    handle = serve.get_app_handle(args.app)

    audio = args.audio.read_bytes()
    transcript = handle.transcribe.remote(audio, **options).result()
    print(f"{transcript.duration:.1f} s, model {transcript.model}, {len(transcript.words)} words")
    print(transcript.text)
    for word in transcript.words[:10]:
        print(f"  {word.start:7.2f} {word.end:7.2f}  {word.confidence:.2f}  {word.word}")

    asyncio.run(transcribe_many(handle, audio, options))
    if args.start:
        serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
