"""Static checks of docker/Dockerfile, docker/docker-compose.yml and .dockerignore.

No Docker engine is needed: the files are parsed and checked against what the image
and the compose service must do (GPU, model cache volume, HF_TOKEN pass-through,
health check on /readyz, the pinned install, no model baked in). The health-check
commands themselves are run against a throwaway local HTTP server.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = ROOT / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
SERVE_CONFIG = ROOT / "serve_config.yaml"
SERVICE = "reverb-serve"
PORT = 8765
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
    assert exec_form(args_of("CMD")[-1]) == ["serve", "run", "serve_config.yaml"]


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


def test_serve_config_matches_the_container():
    if not SERVE_CONFIG.exists():
        pytest.skip("serve_config.yaml is not in the repository yet")
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    http = config.get("http_options") or {}
    assert http.get("port") == PORT, "http_options.port must be 8765, the port the image exposes"
    # Serve's config-file default host is 0.0.0.0; a loopback host is unreachable from outside.
    assert http.get("host", "0.0.0.0") not in ("127.0.0.1", "localhost")
    for app in config.get("applications", []):
        cache_dir = (app.get("args") or {}).get("cache_dir")
        if cache_dir is not None:
            assert str(cache_dir).startswith(CACHE_DIR), "cache_dir must be on the volume"


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
