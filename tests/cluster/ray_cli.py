"""A real Ray cluster started with the ``ray`` CLI, as an operator starts one, and the
project deployed onto it with ``serve deploy``.

The cluster's processes are told apart from any other Ray on the machine by its own
``--temp-dir``: stopping it ends exactly those processes, by PID. ``ray stop`` would
end every Ray process on the host (another test session's, a container's), so it is
not used here; the test checks that nothing of this cluster is left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
SERVE = str(Path(sys.executable).with_name("serve"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass
class RayCliCluster:
    temp_dir: Path
    gcs_address: str
    dashboard_url: str

    def run(self, *args: str, timeout: float = 120) -> str:
        """A ``ray``/``serve`` CLI command against this cluster; its stdout."""
        done = subprocess.run(
            args, env=cli_env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def serve_deploy(self, config: dict[str, Any], path: Path) -> None:
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.run(SERVE, "deploy", str(path), "--address", self.dashboard_url)

    def serve_status(self) -> dict[str, Any]:
        return yaml.safe_load(self.run(SERVE, "status", "--address", self.dashboard_url))

    def wait_running(self, app: str, timeout_s: float = 300) -> dict[str, Any]:
        """Poll ``serve status`` until ``app`` is RUNNING with every deployment HEALTHY."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.serve_status()
            state = status.get("applications", {}).get(app, {})
            deployments = state.get("deployments", {})
            if state.get("status") == "RUNNING" and all(
                d.get("status") == "HEALTHY" for d in deployments.values()
            ):
                return state
            assert state.get("status") != "DEPLOY_FAILED", json.dumps(state, indent=1)
            assert time.monotonic() < deadline, f"{app} not RUNNING: {json.dumps(state)}"
            time.sleep(1.0)

    def driver(self, code: str) -> Any:
        """Run ``code`` in a fresh driver process connected to this cluster; the JSON it
        prints last (a handle call, say: what a Python caller of the app sees)."""
        script = (
            "import json, ray\n"
            f"ray.init(address={self.gcs_address!r}, log_to_driver=False)\n" + code
        )
        out = self.run(sys.executable, "-c", script, timeout=180)
        return json.loads(out.strip().splitlines()[-1])

    def processes(self) -> list[int]:
        """PIDs of this cluster's processes: those whose command line names its temp dir
        (read from /proc: Linux, as CI is)."""
        marker = str(self.temp_dir).encode()
        mine = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if marker in (entry / "cmdline").read_bytes():
                        mine.append(int(entry.name))
                except OSError:  # ended meanwhile
                    continue
        return mine

    def stop(self) -> None:
        """End this cluster's processes only: SIGTERM, then SIGKILL after 15 s."""
        for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.2)


def start_node(
    temp_dir: Path, *, head: str | None, num_cpus: int, num_gpus: int, **ports: int
) -> None:
    """``ray start``: the head (``head=None``, with ``ports`` ``port`` and
    ``dashboard_port``) or a node joining ``head``; all on 127.0.0.1 and ``temp_dir``.
    ``num_gpus`` is what the node advertises: a fake GPU needs no CUDA."""
    args = [RAY, "start", "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus)]
    args += ["--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    if head is None:
        args += ["--head", "--port", str(ports["port"]), "--include-dashboard", "true"]
        args += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(ports["dashboard_port"])]
    else:
        args += ["--address", head]
    done = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"


@contextlib.contextmanager
def ray_cli_cluster(temp_dir: Path, nodes: list[tuple[int, int]]) -> Iterator[RayCliCluster]:
    """A cluster of ``nodes`` (cpus, gpus), the first the head, started with the CLI;
    stopped afterwards, and checked that none of its processes is left."""
    port, dashboard_port = free_port(), free_port()
    cluster = RayCliCluster(temp_dir, f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}")
    try:
        (head_cpus, head_gpus), *others = nodes
        start_node(temp_dir, head=None, num_cpus=head_cpus, num_gpus=head_gpus,
                   port=port, dashboard_port=dashboard_port)  # fmt: skip
        for cpus, gpus in others:
            start_node(temp_dir, head=cluster.gcs_address, num_cpus=cpus, num_gpus=gpus)
        yield cluster
    finally:
        cluster.stop()
    left = cluster.processes()
    assert not left, f"processes of the test cluster left running: {left}"


def production_on(model_dir: Path, port: int, *, keep_gpus: bool = False) -> dict[str, Any]:
    """``serve_config.yaml`` as it is, but loading the test model on CPU and listening on
    127.0.0.1:``port``; the Transcriber reserves no GPU unless ``keep_gpus`` (a node
    with a fake GPU). Every other setting (replica counts, CPU reservations, queues,
    autoscaling bounds, health checks, user_config) is production's."""
    config = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    config["http_options"] = {**config["http_options"], "host": "127.0.0.1", "port": port}
    # The transcription app only: the realtime app's replicas (2 CPUs and half a GPU
    # each) do not fit the simulated nodes, and its tests run on the shared cluster.
    config["applications"] = [
        a for a in config["applications"] if a["import_path"] == "serve_app.app:build_app"
    ]
    (app,) = config["applications"]
    app["args"].update(model=str(model_dir), device="cpu")
    app["args"].pop("cache_dir", None)
    if not keep_gpus:
        app["args"]["num_gpus"] = 0
        for deployment in app["deployments"]:
            deployment["ray_actor_options"]["num_gpus"] = 0
    return config


def demo_clip() -> bytes:
    """A few seconds of the project's own speech (any audio does for the test model)."""
    return sorted((REPO_ROOT / "tests" / "data" / "demo").glob("heldout_*.opus"))[0].read_bytes()
