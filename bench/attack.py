#!/usr/bin/env python3
"""Attacks against a live server on 127.0.0.1, each with its pass criterion.

``bomb``: many clients each upload a silent Opus just under the duration limit (a few
hundred kB that decode to hundreds of MB). Starts the app from a Serve config (default
``configs/local.yaml``) on a local Ray instance, samples the Ingress process's RSS
while the clients run, and reports the peak against the decoded-audio budget, how
many requests were served or shed, and how fast a file over the limit is refused.
Pass: peak RSS growth stays within the budget plus a fixed overhead, every answer is
200, 503 (with Retry-After) or 413, and the over-limit file is refused in seconds.

    python -m bench.attack bomb --clients 64
    python -m bench.attack bomb --clients 64 --budget-s 3600
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from bench._common import (
    app_config,
    emit,
    free_ports,
    load_avg,
    local_ray,
    machine,
    md_table,
    served_app,
)
from bench.attack_http import ATTACKS, Target, as_rows, run_all, silent_opus
from serve_app.deploy import deploy_config
from serve_app.serve.config import AppConfig

ROOT = Path(__file__).resolve().parents[1]
APP = "reverb"


def ingress_pid(dashboard_url: str) -> int:
    """The Ingress replica's process, from Ray's state API."""
    from ray.util.state import list_actors

    alive = list_actors(address=dashboard_url, filters=[("state", "=", "ALIVE")], detail=True)
    for actor in alive:
        if actor.class_name.endswith(f"{APP}:Ingress"):
            return int(actor.pid)
    raise RuntimeError("no live Ingress replica")


class RssSampler:
    """Samples one process's resident set every few milliseconds; keeps the peak."""

    def __init__(self, pid: int, every_s: float = 0.01) -> None:
        self._path = Path(f"/proc/{pid}/status")
        self._every_s = every_s
        self.baseline_mb = self.read_mb()
        self.peak_mb = self.baseline_mb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read_mb(self) -> float:
        for line in self._path.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self.peak_mb = max(self.peak_mb, self.read_mb())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


async def fire(url: str, upload: bytes, clients: int) -> list[tuple[int, float, str]]:
    """``clients`` uploads at once; (status, seconds, Retry-After) each."""
    import httpx

    async def one(client: httpx.AsyncClient) -> tuple[int, float, str]:
        started = time.perf_counter()
        response = await client.post(
            url + "/v1/audio/transcriptions",
            files={"file": ("silence.opus", upload, "audio/ogg")},
            data={"decoding_mode": "ctc_greedy_search"},
        )
        return (
            response.status_code,
            time.perf_counter() - started,
            response.headers.get("retry-after", ""),
        )

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        return await asyncio.gather(*(one(client) for _ in range(clients)))


def bomb(args: argparse.Namespace) -> dict[str, Any]:
    app_args = app_config(Path(args.config), 0, args.budget_s)["applications"][0]["args"]
    limit_s = float(app_args.get("max_audio_seconds", 7200))
    seconds = limit_s - 10
    upload = silent_opus(seconds)
    over = silent_opus(limit_s * 2)
    with local_ray() as dashboard:
        (port,) = free_ports(1)  # after Ray holds its dashboard port
        url = f"http://127.0.0.1:{port}"
        config = app_config(Path(args.config), port, args.budget_s)
        deploy_config(config, dashboard_url=dashboard, timeout_s=300)
        with RssSampler(ingress_pid(dashboard)) as rss:
            answers = asyncio.run(fire(url, upload, args.clients))
            over_answer = asyncio.run(fire(url, over, 1))[0]
        time.sleep(0.5)
    statuses = Counter(status for status, _, _ in answers)
    budget_s = float(app_args.get("max_decoded_audio_seconds", 28800))
    result = {
        "machine": machine(),
        "load_avg": load_avg(),
        "config": args.config,
        "clients": args.clients,
        "upload_bytes": len(upload),
        "upload_audio_s": seconds,
        "decoded_mb_per_upload": seconds * 16000 * 4 / 2**20,
        "budget_s": budget_s,
        "budget_mb": budget_s * 16000 * 4 / 2**20,
        "statuses": dict(statuses),
        "retry_after_on_503": sorted({ra for status, _, ra in answers if status == 503}),
        "max_answer_s": max(s for _, s, _ in answers),
        "rss_baseline_mb": rss.baseline_mb,
        "rss_peak_mb": rss.peak_mb,
        "rss_growth_mb": rss.peak_mb - rss.baseline_mb,
        "over_limit": {"status": over_answer[0], "seconds": over_answer[1]},
    }
    result["passed"] = bool(
        set(statuses) <= {200, 503, 413}
        and result["rss_growth_mb"] <= result["budget_mb"] + 300
        and over_answer[0] == 413
        and over_answer[1] < 10
    )
    return result


ALLOWED_ORIGIN = "http://allowed.example"


@contextlib.contextmanager
def served(config_path: Path) -> Iterator[Target]:
    """The app from ``config_path`` on a local Ray instance, with a fresh API key and
    a CORS origin of our own, so the auth and CORS attacks have something to attack."""
    key = secrets.token_urlsafe(24)
    with served_app(config_path, api_key=key, cors_origins=[ALLOWED_ORIGIN]) as app:
        yield _target(app.url, app.config, key, ALLOWED_ORIGIN)


def _target(url: str, config: dict[str, Any], key: str | None, origin: str | None) -> Target:
    args = config["applications"][0].get("args", {})
    limits = AppConfig(**{**args, "api_key": None, "api_key_env": None})
    return Target(url, key, origin, limits.max_audio_seconds, limits.body_grace_s)


def live(args: argparse.Namespace) -> dict[str, Any]:
    names = args.only or list(ATTACKS)
    started = time.monotonic()
    if args.url:
        config = yaml.safe_load(Path(args.config).read_text())
        outcomes = run_all(_target(args.url, config, args.api_key, args.origin), names)
    else:
        with served(Path(args.config)) as target:
            outcomes = run_all(target, names)
    return {
        "machine": machine(),
        "target": args.url or f"{args.config} on a local Ray instance",
        "seconds": time.monotonic() - started,
        "outcomes": [vars(o) for o in outcomes],
        "failed": sum(not o.passed for o in outcomes),
        "passed": all(o.passed for o in outcomes),
        "rows": as_rows(outcomes),
    }


def live_md(result: dict[str, Any]) -> str:
    table = md_table(["attack", "pass criterion", "result", "answer"], result["rows"])
    return (
        f"{result['machine']}; {result['target']}; {result['seconds']:.0f} s\n\n{table}\n\n"
        f"{len(result['rows']) - result['failed']} of {len(result['rows'])} passed\n"
    )


def report_md(result: dict[str, Any]) -> str:
    rows = [
        ["clients x upload", f"{result['clients']} x {result['upload_bytes']} B "
         f"({result['upload_audio_s']:g} s, {result['decoded_mb_per_upload']:.0f} MB decoded)"],
        ["decoded-audio budget", f"{result['budget_s']:g} s = {result['budget_mb']:.0f} MB"],
        ["answers", ", ".join(f"{k}: {v}" for k, v in sorted(result["statuses"].items()))],
        ["Retry-After on 503", ", ".join(result["retry_after_on_503"]) or "-"],
        ["slowest answer", f"{result['max_answer_s']:.1f} s"],
        ["Ingress RSS", f"{result['rss_baseline_mb']:.0f} MB -> peak "
         f"{result['rss_peak_mb']:.0f} MB (+{result['rss_growth_mb']:.0f} MB)"],
        ["file over the limit", f"{result['over_limit']['status']} in "
         f"{result['over_limit']['seconds']:.2f} s"],
        ["passed", str(result["passed"])],
    ]  # fmt: skip
    return f"{result['machine']}; load {result['load_avg']}\n\n" + md_table(["", ""], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="attack", required=True)
    b = sub.add_parser("bomb", help="decode bombs: peak Ingress RSS against the budget")
    b.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    b.add_argument("--clients", type=int, default=64)
    b.add_argument("--budget-s", type=float, default=None, help="max_decoded_audio_seconds")
    v = sub.add_parser("live", help="the HTTP attacks, against a live server")
    v.add_argument(
        "--config",
        default=str(ROOT / "configs" / "local.yaml"),
        help="app config to start (or, with --url, to read the limits from)",
    )
    v.add_argument("--url", help="attack this running server (127.0.0.1) instead")
    v.add_argument("--api-key", help="the running server's key, for the auth attacks")
    v.add_argument("--origin", help="an origin the running server allows, for CORS")
    v.add_argument("--only", nargs="+", choices=list(ATTACKS))
    for command in (b, v):
        command.add_argument("--md", type=Path)
        command.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.attack == "bomb":
        result = bomb(args)
        emit(report_md(result), args.md, args.json, result)
    else:
        result = live(args)
        emit(live_md(result), args.md, args.json, result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
