#!/usr/bin/env python3
"""One long file on one Transcriber replica and on two: do its chunks spread, and how
much sooner does it finish?

``configs/local.yaml`` (the demo model on CPU) is started twice on a local Ray
instance, with the Transcriber at 1 and then 2 replicas, nothing else changed; each
arm transcribes the same long file ``--runs`` times, one request at a time. Reported:
wall time per arm, the ratio, the transcript (must be the same in both arms), and the
chunks each replica decoded (its ``stats()`` counters, read through a Serve handle).

    python -m bench.fanout
    python -m bench.fanout --minutes 10 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from bench._common import emit, load_avg, machine, md_table, served_app, wav_bytes
from serve_app.engine.audio import decode_audio

ROOT = Path(__file__).resolve().parents[1]
LONG_CLIP = ROOT / "tests" / "data" / "demo" / "long_form.opus"


def long_file(minutes: float) -> bytes:
    """The demo long-form clip (real speech) repeated to ``minutes``, as a WAV."""
    speech = decode_audio(LONG_CLIP.read_bytes())
    repeats = int(np.ceil(minutes * 60 * 16000 / speech.size))
    return wav_bytes(np.tile(speech, repeats)[: int(minutes * 60 * 16000)].astype(np.float32))


def _config_with(replicas: int, source: Path, folder: Path) -> Path:
    config = yaml.safe_load(source.read_text())
    for app in config["applications"]:
        for deployment in app["deployments"]:
            if deployment["name"] == "Transcriber":
                deployment["num_replicas"] = replicas
    path = folder / f"transcribers_{replicas}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _replica_rows() -> dict[str, int]:
    """Chunks decoded by each Transcriber replica (asks until every replica answered)."""
    from ray import serve

    handle = serve.get_deployment_handle("Transcriber", app_name="reverb")
    rows: dict[str, int] = {}
    for _ in range(24):
        stats = handle.stats.remote().result(timeout_s=60)
        rows[stats["replica_id"]] = stats["rows"]
    return rows


def run_arm(replicas: int, config: Path, audio: bytes, runs: int) -> dict[str, Any]:
    with served_app(config) as app, httpx.Client(base_url=app.url, timeout=1800) as http:
        warm = http.post("/v1/audio/transcriptions", files={"file": ("w.wav", audio[:200_000])})
        warm.raise_for_status()
        before = _replica_rows()
        walls, texts = [], set()
        for _ in range(runs):
            started = time.perf_counter()
            response = http.post("/v1/audio/transcriptions", files={"file": ("long.wav", audio)})
            walls.append(time.perf_counter() - started)
            response.raise_for_status()
            texts.add(response.json()["text"])
        after = _replica_rows()
    chunks = {rid: after[rid] - before.get(rid, 0) for rid in after}
    return {
        "replicas": replicas,
        "wall_s": walls,
        "median_s": statistics.median(walls),
        "chunks_per_replica": sorted(chunks.values(), reverse=True),
        "texts": sorted(texts),
    }


def run(minutes: float, runs: int, config: Path) -> dict[str, Any]:
    audio = long_file(minutes)
    with tempfile.TemporaryDirectory() as folder:
        arms = [run_arm(n, _config_with(n, config, Path(folder)), audio, runs) for n in (1, 2)]
    one, two = arms
    return {
        "machine": machine(),
        "load_avg": load_avg(),
        "minutes": minutes,
        "runs": runs,
        "arms": arms,
        "speedup": one["median_s"] / two["median_s"],
        "same_transcript": one["texts"] == two["texts"] and len(one["texts"]) == 1,
        "both_replicas_used": len([c for c in two["chunks_per_replica"] if c > 0]) == 2,
    }


def report_md(result: dict[str, Any]) -> str:
    rows = [
        [
            arm["replicas"],
            " / ".join(f"{w:.1f}" for w in arm["wall_s"]),
            f"{arm['median_s']:.1f}",
            " + ".join(str(c) for c in arm["chunks_per_replica"]),
        ]
        for arm in result["arms"]
    ]
    return (
        f"{result['machine']}; load {result['load_avg']}\n\n"
        f"One {result['minutes']:g}-minute file, {result['runs']} runs per arm, one at a time.\n\n"
        + md_table(["Transcriber replicas", "wall s", "median s", "chunks per replica"], rows)
        + f"\n\nspeedup (1 replica / 2 replicas, medians): {result['speedup']:.2f}x; "
        f"same transcript in both arms: {result['same_transcript']}; "
        f"both replicas decoded chunks: {result['both_replicas_used']}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    parser.add_argument("--md", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run(args.minutes, args.runs, Path(args.config))
    emit(report_md(result), args.md, args.json, result)
    return 0 if result["same_transcript"] and result["both_replicas_used"] else 1


if __name__ == "__main__":
    sys.exit(main())
