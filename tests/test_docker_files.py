"""Static checks of docker/: the Dockerfile, the compose file and its monitoring
profile (Prometheus, Grafana, the dashboard), the smoke script, and .dockerignore.

No Docker engine is needed: the files are parsed and checked against what the image
and the compose service must do (GPU, model cache volume, HF_TOKEN pass-through,
health check on /readyz, the pinned install, no model baked in, the one-GPU config,
Ray's metrics on a pinned port that Prometheus scrapes, a dashboard that names only
metrics Ray really exports). The health-check commands themselves are run against a
throwaway local HTTP server. `make docker-smoke` (docker/smoke.sh) is the run for real.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from serve_app.serve.metrics import EXPORTED_METRICS

ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = ROOT / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
SERVE_CONFIG = ROOT / "serve_config.yaml"
SINGLE_GPU_CONFIG = ROOT / "configs" / "single_gpu.yaml"
PROMETHEUS_CONFIG = DOCKER_DIR / "prometheus.yml"
GRAFANA_DIR = DOCKER_DIR / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "reverb-serve.json"
SMOKE = DOCKER_DIR / "smoke.sh"
SERVICE = "reverb-serve"
PORT = 8765
METRICS_PORT = 8080
CACHE_DIR = "/models"


# --- helpers -------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "Dockerfile ends inside a line continuation"
    return instructions


def args_of(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile_instructions() if kw == keyword]


def env_vars() -> dict[str, str]:
    """Every ENV key=value in the Dockerfile (later ones win)."""
    found: dict[str, str] = {}
    for args in args_of("ENV"):
        for token in shlex.split(args):
            key, sep, value = token.partition("=")
            assert sep, f"ENV {args!r}: use the KEY=value form"
            found[key] = value
    return found


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"{args!r} is not an exec-form JSON array"
    return value


def compose() -> dict:
    with COMPOSE_FILE.open() as fin:
        return yaml.safe_load(fin)


def service() -> dict:
    return compose()["services"][SERVICE]


def seconds(duration: str | int) -> float:
    """A compose/Docker duration such as '10m', '600s' or '1m30s' in seconds."""
    if isinstance(duration, int):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def byte_size(size: str | int) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"(\d+)\s*([kmg]?)b?", size.lower())
    assert match, size
    return int(match[1]) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match[2]]


def readiness_timeout_s() -> float:
    """How long /readyz may wait for a model replica (the Ingress's READINESS_TIMEOUT_S),
    read from the source so that this file needs no Ray import."""
    tree = ast.parse((ROOT / "serve_app" / "serve" / "ingress.py").read_text())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "READINESS_TIMEOUT_S" for t in targets):
            return float(ast.literal_eval(node.value))
    raise AssertionError("READINESS_TIMEOUT_S not found in serve_app/serve/ingress.py")


def urlopen_timeout(code: str) -> float:
    (match,) = re.findall(r"urlopen\([^)]*timeout=(\d+(?:\.\d+)?)\)", code)
    return float(match)


def healthcheck_codes() -> dict[str, str]:
    """The Python source of each health check: the Dockerfile's and the compose file's."""
    (args,) = args_of("HEALTHCHECK")
    _, _, cmd = args.partition(" CMD ")
    image_cmd = exec_form(cmd)
    compose_cmd = service()["healthcheck"]["test"]
    codes = {}
    for name, cmd_list in (("Dockerfile", image_cmd), ("compose", compose_cmd)):
        argv = cmd_list[1:] if cmd_list[0] == "CMD" else cmd_list
        assert argv[:2] == ["python", "-c"] and len(argv) == 3, cmd_list
        codes[name] = argv[2]
    return codes


# --- compose file --------------------------------------------------------------------


def test_compose_builds_the_dockerfile_from_the_repo_root():
    build = service()["build"]
    context = (COMPOSE_FILE.parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_reserves_an_nvidia_gpu():
    devices = service()["deploy"]["resources"]["reservations"]["devices"]
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d["capabilities"]]
    assert gpus, devices
    assert (
        gpus[0].get("count") == "all"
        or int(gpus[0].get("count", 0)) >= 1
        or "device_ids" in gpus[0]
    )


def test_compose_mounts_the_named_model_volume_at_the_cache_dir():
    mounts = service()["volumes"]
    assert f"reverb-models:{CACHE_DIR}" in mounts, mounts
    assert "reverb-models" in compose()["volumes"]
    env = env_vars()
    assert env["REVERB_CACHE_DIR"] == CACHE_DIR
    assert env["HF_HOME"].startswith(CACHE_DIR + "/")


def test_compose_passes_hf_token_through_from_the_environment():
    environment = service()["environment"]
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    assert environment["HF_TOKEN"] in ("${HF_TOKEN:-}", "${HF_TOKEN}", "${HF_TOKEN-}")


def test_compose_publishes_port_8765():
    assert f"{PORT}:{PORT}" in [str(p) for p in service()["ports"]]


def test_compose_healthcheck_waits_for_readyz_long_enough_for_the_download():
    check = service()["healthcheck"]
    assert f"127.0.0.1:{PORT}/readyz" in " ".join(check["test"])
    assert seconds(check["start_period"]) >= 300


def test_healthcheck_timeouts_outlast_the_readiness_wait():
    """/readyz may wait READINESS_TIMEOUT_S for a replica: the probe's urlopen timeout
    must be longer, and Docker's timeout for the probe longer still, or a busy but
    healthy server is counted unhealthy."""
    wait = readiness_timeout_s()
    codes = healthcheck_codes()
    (image_check,) = args_of("HEALTHCHECK")
    docker_timeouts = {
        "Dockerfile": seconds(re.search(r"--timeout=(\S+)", image_check)[1]),
        "compose": seconds(service()["healthcheck"]["timeout"]),
    }
    for where, code in codes.items():
        probe = urlopen_timeout(code)
        assert probe > wait, (where, probe, wait)
        assert docker_timeouts[where] > probe, (where, docker_timeouts[where], probe)


def test_compose_runs_the_single_gpu_config():
    """The one-GPU compose runs configs/single_gpu.yaml (copied into the image), not
    the cluster config."""
    environment = service()["environment"]
    command = service().get("command")
    assert command is None, "keep the image's start command: it pins Ray's metrics port"
    assert environment["REVERB_CONFIG"] == "configs/single_gpu.yaml"
    assert env_vars()["REVERB_CONFIG"] == "configs/single_gpu.yaml"
    assert "configs/" in copied_sources()
    assert SINGLE_GPU_CONFIG.exists()


def test_compose_passes_the_metrics_port_and_offline_switch_from_the_environment():
    environment = service()["environment"]
    assert str(environment["REVERB_METRICS_PORT"]) == str(METRICS_PORT)
    assert environment["HF_HUB_OFFLINE"] == "${HF_HUB_OFFLINE:-0}"
    # Auth stays off unless the config names the variable; no key is shipped.
    assert environment.get("REVERB_API_KEY", "${REVERB_API_KEY:-}") == "${REVERB_API_KEY:-}"


# --- compose profile "monitoring" ----------------------------------------------------


def pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return (
        bool(name)
        and "/" not in tag
        and tag not in ("", "latest")
        and any(c.isdigit() for c in tag)
    )


def host_path(mount: str) -> tuple[Path, str]:
    source, target = mount.split(":")[:2]
    return (COMPOSE_FILE.parent / source).resolve(), target


def test_monitoring_profile_starts_prometheus_and_grafana_beside_the_service():
    services = compose()["services"]
    assert "profiles" not in services[SERVICE], "the service itself must start by default"
    for name, image in (("prometheus", "prom/prometheus"), ("grafana", "grafana/grafana")):
        svc = services[name]
        assert svc["profiles"] == ["monitoring"], name
        assert svc["image"].startswith(image + ":") and pinned(svc["image"]), svc["image"]
        # Reachable from this host only: neither has auth worth the name by default.
        for port in svc["ports"]:
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert set(services) == {SERVICE, "prometheus", "grafana"}


def test_prometheus_scrapes_rays_pinned_metrics_port():
    mounts = dict(
        host_path(m)[::-1]
        for m in compose()["services"]["prometheus"]["volumes"]
        if m.startswith("./")
    )
    assert mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert f"{SERVICE}:{METRICS_PORT}" in targets, targets
    # The port Prometheus scrapes is the one the image pins and exposes.
    assert env_vars()["REVERB_METRICS_PORT"] == str(METRICS_PORT)
    assert str(METRICS_PORT) in " ".join(args_of("EXPOSE")).split()
    (cmd,) = [exec_form(a) for a in args_of("CMD")[-1:]]
    assert '--metrics-export-port="$REVERB_METRICS_PORT"' in cmd[-1]


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard():
    grafana = compose()["services"]["grafana"]
    mounts = dict(host_path(m)[::-1] for m in grafana["volumes"] if m.startswith("./"))
    assert mounts["/etc/grafana/provisioning"] == GRAFANA_DIR / "provisioning"
    dashboards_in_container = next(t for t, src in mounts.items() if src == DASHBOARD.parent)

    (source,) = yaml.safe_load(
        (GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]

    (provider,) = yaml.safe_load(
        (GRAFANA_DIR / "provisioning/dashboards/reverb-serve.yml").read_text()
    )["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == dashboards_in_container

    board = json.loads(DASHBOARD.read_text())
    choices = board["templating"]["list"]
    (datasource,) = [v for v in choices if v["type"] == "datasource"]
    assert datasource["current"]["value"] == source["uid"]


def compose_v2() -> list[str] | None:
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        found = subprocess.run([*argv, "version"], capture_output=True, text=True)
        if found.returncode == 0 and re.search(r"\bv?2\.\d+", found.stdout):
            return argv
    return None


def test_compose_config_validates_with_the_monitoring_profile():
    argv = compose_v2()
    if argv is None:
        pytest.skip("no Docker Compose v2 here; the structure is checked by the tests above")
    result = subprocess.run(
        [*argv, "-f", str(COMPOSE_FILE), "--profile", "monitoring", "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- the dashboard's metrics ---------------------------------------------------------

# Every metric the dashboard may name, with its Prometheus type, as Ray 2.60 exports it
# on the metrics port: "ray_" + the name given to ray.serve.metrics / ray.util.metrics;
# a counter always ends in "_total" (prometheus_client adds it when the name lacks it,
# keeps one when it has it); a histogram is _bucket, _sum and _count series.
REVERB_METRICS = EXPORTED_METRICS  # the app's own list, beside the definitions

# Ray Serve's own, from ray/serve/_private (replica.py, deployment_state.py, router.py,
# request_ingress_metrics.py, batching.py) in Ray 2.60.
SERVE_METRICS = {
    "ray_serve_num_http_requests_total": "counter",  # {route, method, application, status_code}
    "ray_serve_http_request_latency_ms": "histogram",
    "ray_serve_deployment_request_counter_total": "counter",  # {deployment, replica, route}
    "ray_serve_deployment_processing_latency_ms": "histogram",
    "ray_serve_deployment_replica_healthy": "gauge",  # one series per replica, 1 healthy
    "ray_serve_autoscaling_target_replicas": "gauge",
    "ray_serve_replica_processing_queries": "gauge",
    "ray_serve_deployment_queued_queries": "gauge",
    "ray_serve_batch_queue_length": "gauge",
}
METRICS = {**REVERB_METRICS, **SERVE_METRICS}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def exported_name(name: str, kind: str) -> str:
    """What Ray's Prometheus endpoint calls a metric created as ``name``."""
    name = "ray_" + name
    if kind == "counter" and not name.endswith("_total"):
        name += "_total"
    return name


def series_to_metric(series: str) -> str | None:
    if series in METRICS and METRICS[series] != "histogram":
        return series
    for suffix in HISTOGRAM_SERIES:
        base = series.removesuffix(suffix)
        if base != series and METRICS.get(base) == "histogram":
            return base
    return None


def dashboard_exprs() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner["title"], target["expr"]))
    return found


def test_metric_list_is_what_was_agreed():
    assert len(REVERB_METRICS) == 28  # 9 Ingress, 10 Transcriber, 9 Realtime
    for name, kind in METRICS.items():
        assert kind in ("counter", "gauge", "histogram")
        assert name.startswith(("ray_reverb_", "ray_serve_"))
        assert name.endswith("_total") == (kind == "counter"), name


def test_dashboard_is_valid_json_with_panels():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "reverb-serve"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert len(dashboard_exprs()) >= 20


def test_dashboard_names_only_known_metrics_with_the_right_suffixes():
    for title, expr in dashboard_exprs():
        names = re.findall(r"\bray_[a-z0-9_]+", expr)
        assert names, (title, expr)
        for series in names:
            metric = series_to_metric(series)
            assert metric is not None, f"{title}: {series} is not a metric Ray exports ({expr})"
            kind = METRICS[metric]
            wrapped = re.search(rf"\b(rate|increase)\(\s*{series}\b(\{{[^}}]*\}})?\[", expr)
            if kind == "gauge":
                assert not wrapped, f"{title}: rate() of the gauge {series}"
            else:
                assert wrapped, f"{title}: {series} is a {kind}; use rate() over it"
            if kind == "histogram":
                assert series != metric, f"{title}: use {metric}_bucket/_sum/_count"
                if series.endswith("_bucket"):
                    assert "histogram_quantile(" in expr and "le" in expr, (title, expr)


def test_dashboard_shows_every_figure_an_asr_operator_needs():
    used = {
        series_to_metric(s)
        for _, e in dashboard_exprs()
        for s in re.findall(r"\bray_[a-z0-9_]+", e)
    }
    assert set(REVERB_METRICS) <= used, set(REVERB_METRICS) - used
    assert {
        "ray_serve_deployment_replica_healthy",
        "ray_serve_num_http_requests_total",
        "ray_serve_http_request_latency_ms",
    } <= used


def app_metric_names(monkeypatch) -> dict[str, str]:
    """Every metric serve_app.serve.metrics creates, by exported name, found by
    building its metric classes against recording stand-ins for Ray's."""
    import inspect

    import ray.serve.metrics as ray_metrics

    import serve_app.serve.metrics as app_metrics

    created: dict[str, str] = {}

    def recorder(kind):
        class Metric:
            def __init__(self, name, *args, **kwargs):
                created[exported_name(name, kind)] = kind

            def __getattr__(self, attr):
                return lambda *a, **k: None

        return Metric

    for kind in ("Counter", "Gauge", "Histogram"):
        monkeypatch.setattr(ray_metrics, kind, recorder(kind.lower()))
    for _, cls in inspect.getmembers(app_metrics, inspect.isclass):
        if cls.__module__ != app_metrics.__name__ or not cls.__name__.endswith("Metrics"):
            continue
        params = inspect.signature(cls).parameters.values()
        if all(
            p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params
        ):
            cls()
    return created


def test_every_metric_the_app_creates_is_in_the_list(monkeypatch):
    created = app_metric_names(monkeypatch)
    assert created, "found no metrics in serve_app.serve.metrics"
    for name, kind in created.items():
        assert REVERB_METRICS.get(name) == kind, f"{name} ({kind}) is not in REVERB_METRICS"


def test_every_listed_metric_is_created_by_the_app(monkeypatch):
    missing = set(REVERB_METRICS) - set(app_metric_names(monkeypatch))
    assert not missing, sorted(missing)


# --- make docker-smoke -----------------------------------------------------------------


def test_docker_smoke_is_a_make_target_outside_make_test():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^docker-smoke:.*\n\tbash docker/smoke\.sh$", makefile, re.M)
    assert "docker-smoke" in re.search(r"^\.PHONY:(.*)$", makefile, re.M)[1].split()
    for target in ("test", "test-fast"):
        (line,) = re.findall(rf"^{target}:(.*)$", makefile, re.M)
        assert "docker-smoke" not in line


def test_docker_smoke_script_follows_docker_here():
    script = SMOKE.read_text()
    subprocess.run(["bash", "-n", str(SMOKE)], check=True)
    assert "docker-here.sh" in script and "--network host" in script
    assert "BASE_IMAGE=" in script and "local/python:3.11-bookworm" in script
    assert "trap cleanup EXIT" in script
    # The daemon is stopped only when this script started it.
    assert re.search(r'if \[ "\$STARTED_DOCKERD" = 1 \].*\n\s+"\$DOCKER_HERE" stop', script)


def test_compose_gives_ray_a_large_shm_and_restarts():
    svc = service()
    assert byte_size(svc["shm_size"]) >= 2 * 2**30
    assert svc["restart"] in ("always", "unless-stopped", "on-failure")


def test_compose_does_not_expose_the_ray_dashboard():
    published = " ".join(str(p) for p in service()["ports"])
    assert "8265" not in published


# --- Dockerfile ----------------------------------------------------------------------


def test_dockerfile_runs_as_a_non_root_user():
    users = args_of("USER")
    assert users, "no USER instruction: the server would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    arg_defaults = dict(a.partition("=")[::2] for a in args_of("ARG"))
    if user.startswith("${"):
        assert arg_defaults[user[2:-1]] not in ("", "0"), user


def test_dockerfile_enables_expandable_segments():
    env = env_vars()
    assert env["PYTORCH_ALLOC_CONF"] == "expandable_segments:True"
    # torch 2.9.1 still reads the old name but warns from every process that sets it.
    assert "PYTORCH_CUDA_ALLOC_CONF" not in env


def test_dockerfile_exposes_8765_and_checks_readyz():
    assert str(PORT) in " ".join(args_of("EXPOSE")).split()
    (healthcheck,) = args_of("HEALTHCHECK")
    assert f"127.0.0.1:{PORT}/readyz" in healthcheck


def test_dockerfile_starts_ray_with_the_metrics_port_then_serve_run():
    """`serve run` has no way to pin Ray's metrics port, so the image starts the
    one-node cluster with `ray start --head --metrics-export-port` and then execs
    `serve run` (which connects to it) as the main process, so SIGINT reaches it."""
    shell, flag, script = exec_form(args_of("CMD")[-1])
    assert (shell, flag) == ("bash", "-c")
    token, ray_start, serve_run = script.split(" && ")
    # `ray start` turns Ray's token authentication on only when a token exists.
    assert token == "ray get-auth-token --generate >/dev/null"
    assert ray_start.startswith("ray start --head ")
    assert '--metrics-export-port="$REVERB_METRICS_PORT"' in ray_start
    assert serve_run == 'exec serve run "$REVERB_CONFIG"'
    env = env_vars()
    assert env["REVERB_CONFIG"] == "configs/single_gpu.yaml"
    assert env["REVERB_METRICS_PORT"] == str(METRICS_PORT)
    assert args_of("STOPSIGNAL") == ["SIGINT"]


def test_dockerfile_installs_the_pinned_set_in_order():
    runs = " && ".join(args_of("RUN"))
    lock = runs.find("-r requirements/lock.txt")
    no_deps = runs.find("--no-deps -r requirements/no-deps.txt")
    package = runs.find("--no-deps .")
    assert -1 < lock < no_deps < package, runs
    # requirements/ is copied on its own, before the source, for layer caching.
    copies = [a.split()[0] for a in args_of("COPY")]
    assert copies.index("requirements/") < copies.index("serve_app/")


@pytest.mark.parametrize(
    "forbidden",
    ["snapshot_download", "hf_hub_download", "huggingface-cli", "hf download", "git lfs"],
)
def test_dockerfile_never_downloads_a_model_at_build_time(forbidden):
    for run in args_of("RUN"):
        assert forbidden not in run, run


def test_dockerfile_bakes_in_no_token():
    for keyword in ("ARG", "ENV"):
        for args in args_of(keyword):
            assert "HF_TOKEN" not in args, f"{keyword} {args}"


def copied_sources() -> list[str]:
    sources = []
    for args in args_of("COPY"):
        parts = [p for p in args.split() if not p.startswith("--")]
        sources += parts[:-1]
    return sources


@pytest.mark.parametrize("source", copied_sources())
def test_every_copied_path_exists_and_is_not_dockerignored(source):
    path = ROOT / source
    if source == "serve_config.yaml" and not path.exists():
        pytest.skip("serve_config.yaml is not in the repository yet; the image build needs it")
    assert path.exists(), f"Dockerfile copies {source}, which is not in the repository"
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    ]
    name = source.rstrip("/")
    for pattern in patterns:
        assert not fnmatch.fnmatch(name, pattern.rstrip("/")), (source, pattern)
        assert not name.startswith(pattern.rstrip("/") + "/"), (source, pattern)


@pytest.mark.parametrize("path", [SERVE_CONFIG, SINGLE_GPU_CONFIG], ids=lambda p: p.name)
def test_serve_config_matches_the_container(path):
    if not path.exists():
        pytest.skip(f"{path.name} is not in the repository yet")
    config = yaml.safe_load(path.read_text())
    http = config.get("http_options") or {}
    assert http.get("port") == PORT, "http_options.port must be 8765, the port the image exposes"
    # Serve's config-file default host is 0.0.0.0; a loopback host is unreachable from outside.
    assert http.get("host", "0.0.0.0") not in ("127.0.0.1", "localhost")
    for app in config.get("applications", []):
        cache_dir = (app.get("args") or {}).get("cache_dir")
        if cache_dir is not None:
            assert str(cache_dir).startswith(CACHE_DIR), "cache_dir must be on the volume"


def test_single_gpu_config_fits_one_gpu_and_a_small_box():
    """One box: the file API's Transcriber and the live sessions' Realtime replica share
    its one GPU, both on the volume's model, each stops within compose's grace period."""
    config = yaml.safe_load(SINGLE_GPU_CONFIG.read_text())
    apps = {app["import_path"].rsplit(":", 1)[1]: app for app in config["applications"]}
    assert set(apps) == {"build_app", "build_realtime_app"}
    deployments = {d["name"]: d for app in apps.values() for d in app["deployments"]}
    assert set(deployments) == {"Ingress", "Transcriber", "Realtime"}
    for app in apps.values():
        args = app["args"]
        assert (args["model"], args["cache_dir"], args["device"]) == (
            "reverb_asr_v1",
            CACHE_DIR,
            "cuda",
        )
        # Offline is the operator's choice (the container's environment), and no key ships.
        env = (app.get("runtime_env") or {}).get("env_vars") or {}
        assert "HF_HUB_OFFLINE" not in env
        assert "api_key" not in args
        assert not any("KEY" in name for name in env), env
    assert apps["build_realtime_app"]["args"]["transcription_app"] == apps["build_app"]["name"]
    ingress = deployments["Ingress"]
    assert ingress["ray_actor_options"]["num_cpus"] == 1
    assert ingress["ray_actor_options"]["num_gpus"] == 0
    for deployment in deployments.values():
        assert deployment["num_replicas"] == 1, deployment["name"]
        assert "autoscaling_config" not in deployment, deployment["name"]
    gpus = sum(d["ray_actor_options"]["num_gpus"] for d in deployments.values())
    assert gpus == 1, "both model replicas on the one GPU"
    cpus = sum(d["ray_actor_options"]["num_cpus"] for d in deployments.values())
    assert cpus <= 4, "leave the cores of a 6-core box beyond 4 to Ray itself and the proxy"
    # A graceful stop fits in compose's grace period.
    grace = seconds(service()["stop_grace_period"])
    for name in ("Transcriber", "Realtime"):
        assert deployments[name]["graceful_shutdown_timeout_s"] < grace, name


# --- health-check commands, run for real ---------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_check(code: str, port: int) -> int:
    assert f":{PORT}/" in code
    code = code.replace(f":{PORT}/", f":{port}/")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode


@pytest.mark.parametrize("where", ["Dockerfile", "compose"])
def test_healthcheck_passes_on_200_and_fails_otherwise(where, stub_server, monkeypatch):
    code = healthcheck_codes()[where]
    port = stub_server.server_address[1]
    monkeypatch.setattr(_Handler, "status", 200)
    assert run_check(code, port) == 0
    monkeypatch.setattr(_Handler, "status", 503)
    assert run_check(code, port) != 0


@pytest.mark.parametrize("where", ["Dockerfile", "compose"])
def test_healthcheck_fails_when_nothing_listens(where):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = server.server_address[1]
    server.server_close()
    assert run_check(healthcheck_codes()[where], port) != 0
