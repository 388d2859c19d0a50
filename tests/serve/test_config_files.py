"""Every Serve config in the repository is valid before anyone deploys it.

Checks, per file: Ray's own schema accepts it; its ``args`` pass ``AppConfig``; the
builder turns them into an app (no Ray cluster needed); the ``deployments:`` it
names are the ones the builder creates; and the sizing rules the code relies on
hold (batches can fill, our 503 comes before Serve's queue, num_gpus is explicit
because YAML replaces ``ray_actor_options`` wholesale).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.app import build_app, build_realtime_app
from serve_app.serve.config import AppConfig, BatchingConfig
from serve_app.serve.ingress import Ingress
from serve_app.serve.realtime_config import RealtimeConfig
from serve_app.serve.transcriber_deployment import Transcriber

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILES = [REPO_ROOT / "serve_config.yaml", *sorted((REPO_ROOT / "configs").glob("*.yaml"))]
# The Transcriber's share of a GPU (single_gpu.yaml: half, the Realtime replica has the rest).
EXPECTED_GPUS = {
    "serve_config.yaml": 1,
    "local.yaml": 0,
    "multi_gpu.yaml": 1,
    "single_gpu.yaml": 0.5,
}
TRANSCRIPTION = "serve_app.app:build_app"
REALTIME = "serve_app.app:build_realtime_app"


def _load(path: Path) -> dict[str, Any]:
    with path.open() as fin:
        return yaml.safe_load(fin)


def _apps(path: Path, import_path: str = TRANSCRIPTION) -> list[dict[str, Any]]:
    return [a for a in _load(path)["applications"] if a["import_path"] == import_path]


def test_the_expected_files_exist():
    assert {p.name for p in CONFIG_FILES} >= set(EXPECTED_GPUS)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_ray_accepts_the_file(path):
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(_load(path))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_args_validate_and_build(path):
    from ray.serve import Application

    assert {a["import_path"] for a in _load(path)["applications"]} <= {TRANSCRIPTION, REALTIME}
    for app in _apps(path):
        AppConfig.model_validate(app["args"])
        assert isinstance(build_app(app["args"]), Application)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_named_deployments_exist_and_are_sized_consistently(path):
    built = {Ingress.name, Transcriber.name}
    for app in _apps(path):
        args = AppConfig.model_validate(app["args"])
        deployments = {d["name"]: d for d in app.get("deployments", [])}
        assert set(deployments) <= built, f"{path.name} names unknown deployments"
        assert set(deployments) == built, f"{path.name} should size both deployments"

        transcriber = deployments["Transcriber"]
        assert transcriber["ray_actor_options"]["num_gpus"] == EXPECTED_GPUS[path.name]
        batching = BatchingConfig.model_validate(transcriber["user_config"])
        assert transcriber["max_ongoing_requests"] >= batching.max_batch_size

        # No unbounded queue: Serve's own queues are bounded and sized above ours.
        assert transcriber["max_queued_requests"] >= args.transcriber_max_queued_requests

        ingress = deployments["Ingress"]
        assert ingress["ray_actor_options"].get("num_gpus", 0) == 0
        assert ingress["max_queued_requests"] >= args.ingress_max_ongoing_requests
        if "max_ongoing_requests" in ingress:
            assert ingress["max_ongoing_requests"] >= args.ingress_max_ongoing_requests


GPUS_ON_THE_BOX = {"local.yaml": 0, "single_gpu.yaml": 1, "multi_gpu.yaml": 8}


@pytest.mark.parametrize("name", sorted(GPUS_ON_THE_BOX))
def test_every_replica_at_its_most_fits_the_box_the_file_is_for(name):
    """The files for one box: the file API's and the live sessions' replicas, scaled up as
    far as they may go, never ask for more GPUs than the box has (Serve would leave the
    extra ones pending for ever, silently)."""
    config = _load(REPO_ROOT / "configs" / name)
    wanted = 0.0
    for app in config["applications"]:
        for deployment in app["deployments"]:
            scaling = deployment.get("autoscaling_config") or {}
            replicas = scaling.get("max_replicas", deployment.get("num_replicas", 1))
            wanted += replicas * deployment["ray_actor_options"]["num_gpus"]
    assert wanted <= GPUS_ON_THE_BOX[name]
    assert _apps(REPO_ROOT / "configs" / name, REALTIME), "every box serves live sessions too"


def test_production_serves_reverb_on_port_8765():
    config = _load(REPO_ROOT / "serve_config.yaml")
    assert config["http_options"] == {**config["http_options"], "host": "0.0.0.0", "port": 8765}
    (app,) = _apps(REPO_ROOT / "serve_config.yaml")
    args = AppConfig.model_validate(app["args"])
    assert (args.model, args.cache_dir, args.device) == ("reverb_asr_v1", "/models", "cuda")
    scaling = app["deployments"][1]["autoscaling_config"]
    assert scaling["min_replicas"] <= scaling["max_replicas"]


def test_local_serves_the_bundled_model_on_cpu():
    apps = {a["name"]: a for a in _apps(REPO_ROOT / "configs" / "local.yaml")}
    args = AppConfig.model_validate(apps["reverb"]["args"])
    assert (args.device, args.model, args.served_model_name) == ("cpu", "models/demo", "demo")
    live = AppConfig.model_validate(apps["reverb-live"]["args"])
    assert (live.device, live.model) == ("cpu", "models/demo-live")
    (realtime,) = _apps(REPO_ROOT / "configs" / "local.yaml", REALTIME)
    assert RealtimeConfig.model_validate(realtime["args"]).transcription_app == "reverb-live"
    cpus = sum(
        d["ray_actor_options"]["num_cpus"]
        for a in _load(REPO_ROOT / "configs" / "local.yaml")["applications"]
        for d in a["deployments"]
    )
    assert cpus <= 2, "make run must fit a 2-core machine"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_no_config_ships_a_key_or_forces_offline(path):
    """A key in a published file protects nothing; auth is on by naming ``api_key_env``
    (the Ingress refuses to start while it is empty). Whether replicas may download
    the model is the operator's choice, made in the nodes' environment."""
    for app in _apps(path) + _apps(path, REALTIME):
        assert "api_key" not in app["args"], path.name
        env_vars = app.get("runtime_env", {}).get("env_vars", {})
        assert not {"HF_HUB_OFFLINE", "HF_TOKEN"} & set(env_vars), path.name
        if key_env := app["args"].get("api_key_env"):
            assert key_env not in env_vars, f"{path.name} ships a value for {key_env}"


@pytest.mark.parametrize(
    "path", [p for p in CONFIG_FILES if _apps(p, REALTIME)], ids=lambda p: p.name
)
def test_realtime_apps_pair_with_a_transcription_app_and_outlive_no_timeout(path):
    """A realtime app builds; its finals go to a transcription app in the same file, on
    the same device (so live finals equal that app's file API); a session ends with an
    error event before Serve's request timeout would cut the WebSocket without a word;
    its replica's session limit is what bounds it, not Serve's queue. Where the two
    models differ (configs/local.yaml: the streaming demo model for partials), the
    realtime one must be a folder in the repository."""
    from ray.serve import Application

    config = _load(path)
    transcription = {a["name"]: a for a in _apps(path)}
    timeout = config.get("http_options", {}).get("request_timeout_s")
    for app in _apps(path, REALTIME):
        args = RealtimeConfig.model_validate(app["args"])
        assert isinstance(build_realtime_app(app["args"]), Application)
        paired = AppConfig.model_validate(transcription[args.transcription_app]["args"])
        assert args.device == paired.device
        if args.model != paired.model:
            assert (REPO_ROOT / args.model / "config.yaml").is_file(), args.model
        if timeout is not None:
            assert args.max_session_s < timeout
        (deployment,) = app["deployments"]
        assert deployment["name"] == "Realtime"
        assert "num_gpus" in deployment["ray_actor_options"]
        assert deployment.get("max_ongoing_requests", args.max_sessions + 8) > args.max_sessions
