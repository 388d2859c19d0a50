"""``make run``'s command stops with everything it started when one SIGTERM reaches it,
as a process manager, ``kill`` or ``make`` passing a signal on sends it. Ctrl-C in a
terminal reaches the whole process group; a signal to one PID does not, and when the
command waited on ``serve run`` as a child, that left Serve and its local Ray running."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from ray_cli import REPO_ROOT, cli_env, free_port

pytestmark = pytest.mark.slow


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc: Linux, as CI is)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    """Those still running (a zombie has ended: it only waits to be reaped)."""
    running = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                running.add(pid)
    return running


def test_sigterm_to_the_run_command_stops_serve_and_the_ray_it_started(tiny_model_dir, tmp_path):
    port = free_port()
    config = yaml.safe_load((REPO_ROOT / "configs" / "local.yaml").read_text())
    config["http_options"]["port"] = port
    (app,) = [a for a in config["applications"] if a["name"] == "reverb"]
    app["args"]["model"] = str(tiny_model_dir)
    config["applications"] = [app]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # A new local Ray, never one another test or a `ray start` left on this machine.
    env = {**cli_env(), "RAY_ADDRESS": "local"}
    run = subprocess.Popen(
        [sys.executable, "-m", "serve_app.cli", "run", "--config", str(path)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so that the cleanup below can end the whole group
    )
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert run.poll() is None, "the run command ended before serving"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            time.sleep(1)
        else:
            pytest.fail("not serving within 240 s")
        started = descendants(run.pid)
        assert len(started) >= 3, "serve run starts Ray's processes below itself"
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
        deadline = time.monotonic() + 60
        while alive(started) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not alive(started), f"left running after SIGTERM: {sorted(alive(started))}"
    finally:
        for pid in alive(started | {run.pid}):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.wait(timeout=10)
