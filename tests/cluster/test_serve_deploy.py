"""``serve deploy`` of the production config's layout onto a running cluster, then the
two kinds of update an operator makes: a ``user_config`` change (applied live, same
replicas) and an ``args`` change (new replicas)."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
from ray_cli import SERVE, RayCliCluster, demo_clip, free_port, production_on

pytestmark = pytest.mark.slow

APP = "reverb"
TRANSCRIPTIONS = "/v1/audio/transcriptions"

_STATS = """
from ray import serve
handle = serve.get_deployment_handle("Transcriber", app_name="reverb")
stats = [handle.stats.remote().result(timeout_s=60) for _ in range(4)]
print(json.dumps(stats))
"""


def _transcribe(url: str, wav: bytes) -> httpx.Response:
    return httpx.post(url + TRANSCRIPTIONS, files={"file": ("a.wav", wav)}, timeout=120)


def _replicas(cluster: RayCliCluster) -> dict[str, dict[str, Any]]:
    """What each Transcriber replica reports (several calls, so every replica answers)."""
    return {s["replica_id"]: s for s in cluster.driver(_STATS)}


def _ingress_ids(cluster: RayCliCluster) -> set[str]:
    status = cluster.serve_status()
    ingress = status["applications"][APP]["deployments"]["Ingress"]
    assert ingress["replica_states"] == {"RUNNING": 2}, ingress
    actors = cluster.driver(
        "from ray.util.state import list_actors\n"
        "alive = list_actors(filters=[('state', '=', 'ALIVE')], limit=1000)\n"
        "print(json.dumps([a.name for a in alive]))"
    )
    return {name for name in actors if "#Ingress#" in name}


def test_serve_deploy_then_live_and_rolling_updates(head_only, tiny_model_dir, tmp_path):
    cluster = head_only
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = production_on(tiny_model_dir, port)
    audio = demo_clip()

    cluster.serve_deploy(config, tmp_path / "deploy.yaml")
    state = cluster.wait_running(APP)
    assert set(state["deployments"]) == {"Ingress", "Transcriber"}
    assert _transcribe(url, audio).status_code == 200
    before = _replicas(cluster)
    ingress_before = _ingress_ids(cluster)
    assert [s["max_batch_size"] for s in before.values()] == [32]

    # A user_config change: applied by reconfigure() on the same replica, no restart.
    live = copy.deepcopy(config)
    transcriber = next(
        d for d in live["applications"][0]["deployments"] if d["name"] == "Transcriber"
    )
    transcriber["user_config"] = {"max_batch_size": 8, "batch_wait_timeout_s": 0.01}
    cluster.serve_deploy(live, tmp_path / "live.yaml")
    cluster.wait_running(APP)
    after = _replicas(cluster)
    assert set(after) == set(before), "a user_config change must not replace replicas"
    (stats,) = after.values()
    (old,) = before.values()
    assert (stats["max_batch_size"], stats["batch_wait_timeout_s"]) == (8, 0.01)
    assert stats["pid"] == old["pid"] and stats["reconfigures"] == old["reconfigures"] + 1
    assert _ingress_ids(cluster) == ingress_before
    assert _transcribe(url, audio).status_code == 200

    # An args change: every replica is replaced (rolling), and the new limit holds.
    rolled = copy.deepcopy(live)
    rolled["applications"][0]["args"]["max_audio_seconds"] = 1
    cluster.serve_deploy(rolled, tmp_path / "rolled.yaml")
    cluster.wait_running(APP)
    assert not set(_replicas(cluster)) & set(after), "an args change must replace replicas"
    assert not _ingress_ids(cluster) & ingress_before
    too_long = _transcribe(url, audio)  # the clip is longer than the new 1 s limit
    assert too_long.status_code == 413 and too_long.json()["error"]["code"] == "audio_too_long"

    cluster.run(SERVE, "shutdown", "--address", cluster.dashboard_url, "--yes")
    assert not cluster.serve_status().get("applications")
