"""Shared helpers for the benchmarks: synthetic audio, the clip-length mix, a machine line."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from scripts import make_test_model
from serve_app.engine.features import SAMPLE_RATE

REPO_ROOT = Path(__file__).resolve().parents[1]
FILE_API_APP = "reverb"


def speech(seconds: float, seed: int) -> np.ndarray:
    """Speech-like 16 kHz float audio that the random test models turn into words."""
    return make_test_model.speechlike_audio(seconds, seed=seed)


def wav_bytes(audio: np.ndarray) -> bytes:
    """16-bit mono PCM WAV of float audio in [-1, 1] (the engine's own encoder)."""
    from serve_app.engine.audio import encode_wav

    return encode_wav(audio, SAMPLE_RATE)


def mix_lengths(n: int, seed: int = 0, low: float = 2.0, high: float = 60.0) -> list[float]:
    """``n`` clip lengths in seconds, log-uniform in [low, high] (many short, some long),
    rounded to 0.1 s. Arrival order is the order returned."""
    rng = np.random.default_rng(seed)
    values = np.exp(rng.uniform(np.log(low), np.log(high), size=n))
    return [round(float(v), 1) for v in values]


def machine() -> str:
    """One line describing where the numbers came from."""
    import torch

    cpus = os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.machine()}, {cpus} CPU cores, {gpu}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def md_table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def emit(text: str, md: Path | None = None, json_path: Path | None = None, result=None) -> None:
    """Print the report; write it to ``md`` and ``result`` as JSON to ``json_path``."""
    print(text)
    if md:
        md.write_text(text.rstrip("\n") + "\n")
    if json_path:
        json_path.write_text(json.dumps(result, indent=1, default=str))


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now (all held open while they are picked)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


@contextlib.contextmanager
def local_ray(num_cpus: int = 8) -> Iterator[str]:
    """A local Ray instance with its dashboard on 127.0.0.1 (Serve's REST API lives
    there); yields the dashboard URL and shuts Serve and Ray down afterwards."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    (dashboard_port,) = free_ports(1)
    context = ray.init(
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        log_to_driver=False,
    )
    try:
        yield "http://" + context.dashboard_url
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def app_config(
    path: Path,
    port: int,
    budget_s: float | None = None,
    apps: tuple[str, ...] | None = (FILE_API_APP,),
    **overrides: Any,
) -> dict[str, Any]:
    """The Serve config at ``path`` on a free loopback port, the model path absolute,
    with ``overrides`` applied to the apps' args. Only the ``apps`` named are kept
    (None: all): the file API's benchmarks measure that app alone, without the live
    apps and their models sharing the cores."""
    config = yaml.safe_load(path.read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    config["proxy_location"] = "HeadOnly"
    if apps is not None:
        config["applications"] = [a for a in config["applications"] if a["name"] in apps]
    for app in config["applications"]:
        args = app.setdefault("args", {})
        model = Path(args.get("model", ""))
        if args.get("model") and not model.is_absolute() and (REPO_ROOT / model).is_dir():
            args["model"] = str((REPO_ROOT / model).resolve())
        if budget_s is not None:
            args["max_decoded_audio_seconds"] = budget_s
        args.update(overrides)
    return config


@dataclass(frozen=True)
class ServedApp:
    url: str
    config: dict[str, Any]
    dashboard_url: str


@contextlib.contextmanager
def served_app(
    config_path: Path, env_vars: dict[str, str] | None = None, **overrides: Any
) -> Iterator[ServedApp]:
    """The app from a Serve config file on a local Ray instance, on a free loopback
    port, ``overrides`` applied to its args and ``env_vars`` to its replicas'
    environment; shuts it all down after."""
    from serve_app.deploy import deploy_config

    with local_ray() as dashboard:
        (port,) = free_ports(1)  # after Ray holds its own ports
        config = app_config(config_path, port, **overrides)
        if env_vars:
            for app in config["applications"]:
                runtime_env = app.setdefault("runtime_env", {})
                runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env_vars}
        deploy_config(config, dashboard_url=dashboard, timeout_s=300)
        yield ServedApp(f"http://127.0.0.1:{port}", config, dashboard)
