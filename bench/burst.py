#!/usr/bin/env python3
"""Bursts against a live server: do they wait, or get refused?

Two bursts, each sent all at once after every clip's solo transcript was taken:

* ``mixed``: 8 clips (seven real 3-4.5 s clips, one 50 s clip), 3 requests each (24).
  Pass: 24 x 200, each equal to its clip's solo transcript.
* ``flood``: 96 requests for 4 s clips. Pass: at least half 200 (each right), every
  other answer a 503 with Retry-After, answered within 100 ms of its arrival.

Then ``fairness``: 20 short clips one after another, alone and again while a
30-minute file is being transcribed; reports both p95 latencies (the fan-out window is
what keeps the second close to the first).

Starts ``configs/local.yaml`` on a local Ray instance unless ``--url`` names a running
server (127.0.0.1 only).

    python -m bench.burst
    python -m bench.burst --url http://127.0.0.1:8765
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench._common import emit, load_avg, machine, md_table, served_app, wav_bytes
from bench.attack_http import silent_opus
from serve_app.engine.audio import decode_audio

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "demo"
FORM = {"model": "whisper-1"}


def clips() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(the mixed burst's 8 clips, the flood's 4 s clips), as files to upload."""
    short = {}
    for path in sorted(DATA.glob("heldout_*.opus")):
        seconds = decode_audio(path.read_bytes()).size / 16000
        if 3.0 <= seconds <= 4.5:
            short[path.name] = (seconds, path.read_bytes())
    mixed = {name: data for name, (_, data) in list(short.items())[:7]}
    long_form = decode_audio((DATA / "long_form.opus").read_bytes())
    mixed["long_form[0:50s].wav"] = wav_bytes(long_form[: 50 * 16000].astype(np.float32))
    flood = {name: data for name, (s, data) in short.items() if 3.7 <= s <= 4.3}
    return mixed, flood or {n: d for n, (_, d) in short.items()}


async def _post(client: httpx.AsyncClient, name: str, data: bytes) -> dict[str, Any]:
    started = time.perf_counter()
    response = await client.post(
        "/v1/audio/transcriptions", files={"file": (name, data)}, data=FORM
    )
    return {
        "clip": name,
        "status": response.status_code,
        "seconds": time.perf_counter() - started,
        "text": response.json().get("text") if response.status_code == 200 else None,
        "retry_after": response.headers.get("retry-after"),
        "error": None if response.status_code == 200 else response.text[:160],
    }


async def _burst(url: str, uploads: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=len(uploads))
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        return await asyncio.gather(*(_post(client, name, data) for name, data in uploads))


def _solo(url: str, files: dict[str, bytes]) -> dict[str, str]:
    """Each clip alone, one at a time: the transcript every burst answer must equal."""
    with httpx.Client(base_url=url, timeout=300) as client:
        texts = {}
        for name, data in files.items():
            response = client.post(
                "/v1/audio/transcriptions", files={"file": (name, data)}, data=FORM
            )
            response.raise_for_status()
            texts[name] = response.json()["text"]
        return texts


async def _fairness(url: str, short: list[tuple[str, bytes]], long_file: bytes) -> dict:
    """p95 of sequential short requests alone, then beside one long file."""

    async def sequential(client: httpx.AsyncClient) -> list[float]:
        return [(await _post(client, name, data))["seconds"] for name, data in short]

    def p95(values: list[float]) -> float:
        return sorted(values)[max(int(len(values) * 0.95) - 1, 0)]

    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        alone = await sequential(client)
        long_task = asyncio.create_task(_post(client, "long.opus", long_file))
        await asyncio.sleep(3.0)  # the long file is decoded and on the model
        beside = await sequential(client)
        still_running = not long_task.done()
        long_answer = await long_task
    return {
        "p95_alone_s": p95(alone),
        "p95_beside_long_s": p95(beside),
        "long_file_status": long_answer["status"],
        "long_file_s": long_answer["seconds"],
        "long_file_still_running_after": still_running,
    }


def _summary(answers: list[dict[str, Any]], solo: dict[str, str]) -> dict[str, Any]:
    ok = [a for a in answers if a["status"] == 200]
    shed = [a for a in answers if a["status"] != 200]
    latencies = sorted(a["seconds"] for a in ok)
    return {
        "requests": len(answers),
        "statuses": dict(Counter(a["status"] for a in answers)),
        "wrong_transcripts": sum(a["text"] != solo[a["clip"]] for a in ok),
        "p50_s": latencies[len(latencies) // 2] if latencies else None,
        "max_s": latencies[-1] if latencies else None,
        "shed_max_s": max((a["seconds"] for a in shed), default=None),
        "shed_without_retry_after": sum(a["status"] == 503 and not a["retry_after"] for a in shed),
        "retry_after": sorted({a["retry_after"] for a in shed if a["retry_after"]}),
        "errors": dict(Counter(a["error"] for a in shed)),
    }


def run(url: str) -> dict[str, Any]:
    mixed, flood = clips()
    solo = _solo(url, {**mixed, **flood})
    mixed_uploads = [(name, data) for name, data in mixed.items() for _ in range(3)]
    names = list(flood)
    flood_uploads = [(names[i % len(names)], flood[names[i % len(names)]]) for i in range(96)]
    started = time.perf_counter()
    mixed_answers = asyncio.run(_burst(url, mixed_uploads))
    mixed_s = time.perf_counter() - started
    time.sleep(2.0)
    before_flood = httpx.get(url + "/readyz", timeout=30).json()
    started = time.perf_counter()
    flood_answers = asyncio.run(_burst(url, flood_uploads))
    flood_s = time.perf_counter() - started
    short = [(names[i % len(names)], flood[names[i % len(names)]]) for i in range(20)]
    fairness = asyncio.run(_fairness(url, short, silent_opus(1800)))
    result = {
        "machine": machine(),
        "load_avg": load_avg(),
        "target": url,
        "mixed": {**_summary(mixed_answers, solo), "wall_s": mixed_s},
        "flood": {**_summary(flood_answers, solo), "wall_s": flood_s},
        "readyz_before_flood": before_flood,
        "fairness": fairness,
    }
    m, f = result["mixed"], result["flood"]
    ok_flood = f["statuses"].get(200, 0)
    result["passed"] = {
        "mixed: 24 x 200, all right": m["statuses"] == {200: 24} and not m["wrong_transcripts"],
        "flood: >= 48 x 200, all right": ok_flood >= 48 and not f["wrong_transcripts"],
        "flood: the rest 503 + Retry-After in < 100 ms": set(f["statuses"]) <= {200, 503}
        and not f["shed_without_retry_after"]
        and (f["shed_max_s"] is None or f["shed_max_s"] < 0.1),
    }
    return result


def report_md(result: dict[str, Any]) -> str:
    rows = []
    for burst in ("mixed", "flood"):
        s = result[burst]
        rows.append(
            [
                burst,
                s["requests"],
                ", ".join(f"{k}: {v}" for k, v in sorted(s["statuses"].items())),
                s["wrong_transcripts"],
                f"{s['p50_s']:.2f} / {s['max_s']:.2f}" if s["p50_s"] is not None else "-",
                f"{s['shed_max_s'] * 1000:.0f} ms" if s["shed_max_s"] is not None else "-",
                ", ".join(s["retry_after"]) or "-",
                f"{s['wall_s']:.1f}",
            ]
        )
    table = md_table(
        ["burst", "requests", "answers", "wrong", "200 p50 / max s", "slowest shed",
         "Retry-After", "wall s"],
        rows,
    )  # fmt: skip
    checks = "\n".join(
        f"- {name}: {'met' if ok else 'NOT met'}" for name, ok in result["passed"].items()
    )
    head = f"{result['machine']}; load {result['load_avg']}; {result['target']}"
    ready = result["readyz_before_flood"]
    seen = (
        f"Before the flood the Ingress had measured {ready.get('throughput_audio_s_per_s')} "
        f"audio-s/s overall, {ready.get('drain_rate_audio_s_per_s')} while saturated, and a "
        f"typical request of {ready.get('typical_request_audio_s')} s."
    )
    fair = result["fairness"]
    fairness = (
        f"Short requests one at a time: p95 {fair['p95_alone_s']:.2f} s alone, "
        f"{fair['p95_beside_long_s']:.2f} s while a 30-minute file ran (it took "
        f"{fair['long_file_s']:.1f} s, status {fair['long_file_status']}; still running "
        f"when the short ones finished: {fair['long_file_still_running_after']})."
    )
    return f"{head}\n\n{table}\n\n{checks}\n\n{seen}\n\n{fairness}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server on 127.0.0.1")
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    parser.add_argument("--md", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(served_app(Path(args.config))).url
        result = run(url)
    emit(report_md(result), args.md, args.json, result)
    return 0 if all(result["passed"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
