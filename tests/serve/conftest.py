"""One real Ray cluster and Serve instance for the whole session, with the test apps.

The apps are deployed the way ``serve run configs/local.yaml`` deploys them: as a
declarative Serve config that names ``serve_app.app:build_app`` and its ``args``.
That is also the only way Serve applies a new ``user_config`` to live replicas (an
imperative ``serve.run`` replaces them), which the reconfigure test relies on.

Apps (one Serve instance, one HTTP port):

* ``reverb`` at ``/``: the tiny model, generous limits; most tests use it.
* ``guarded`` at ``/guarded``: an API key, one request at a time, a 200 kB upload
  limit, a CORS allowlist and one transcription per client (told apart by the
  ``X-Client-Id`` header, else the peer address), for the admission tests.
* ``caller`` (no HTTP route): a second deployment that calls ``reverb`` through a handle.
* ``reliable`` at ``/reliable``: two Transcriber replicas and one chunk per request on
  the model at a time, for the fault tests in ``reliability/`` (replica deaths,
  disconnects), which kill or starve its replicas without touching the other apps.
* ``two-ingress`` at ``/two-ingress``: two Ingress replicas, for killing one of them.
* ``realtime`` at ``/v1/realtime``: live sessions on the tiny model, finals through the
  ``reverb`` app's Ingress, at most 3 sessions, the API key on (the realtime tests).
* ``demo`` at ``/demo``: the bundled demo model (real speech), for the browser-page
  tests; the guarded app's CORS allowlist also names ``http://127.0.0.1:<port>``, so a
  page served from ``/demo`` may call it cross-origin through ``http://localhost``.
* ``demo-realtime`` at ``/demo/v1/realtime``: live sessions on the streaming demo model
  (``models/demo-live``), finals through ``demo``, as configs/local.yaml pairs them:
  where the page served from ``/demo`` opens its live captions.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_helpers import (
    ALLOWED_ORIGIN,
    API_KEY,
    BASE_BATCHING,
    CALLER_APP,
    CLIENT_ID_HEADER,
    DEMO_APP,
    DEMO_PREFIX,
    DEMO_REALTIME_APP,
    DEMO_REALTIME_PREFIX,
    DEPLOY_TIMEOUT_S,
    GUARDED_APP,
    GUARDED_PREFIX,
    GUARDED_UPLOAD_LIMIT,
    MAIN_APP,
    REALTIME_APP,
    REALTIME_PREFIX,
    RELIABLE_APP,
    RELIABLE_PREFIX,
    TWO_INGRESS_APP,
    TWO_INGRESS_PREFIX,
    wav_bytes,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL_DIR = REPO_ROOT / "models" / "demo"
DEMO_LIVE_MODEL_DIR = REPO_ROOT / "models" / "demo-live"  # streaming: the live partials


# --------------------------------------------------------------------------- audio


@pytest.fixture(scope="session")
def speech(synth) -> Callable[..., np.ndarray]:
    """``speech(seconds, seed)``: the speech-like audio the tiny model is calibrated on."""
    return synth


@pytest.fixture(scope="session")
def make_wav(synth) -> Callable[..., bytes]:
    """``make_wav(seconds, seed)``: WAV bytes of speech-like audio."""
    return lambda seconds, seed=0: wav_bytes(synth(seconds, seed))


# --------------------------------------------------------------------------- Ray + Serve


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServeCluster:
    """The session's Serve instance and how to (re)apply the test config."""

    port: int
    model_dir: Path
    dashboard_url: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def page_origin(self) -> str:
        """The origin of a page loaded from this Serve instance by its IP address."""
        return self.base_url

    @property
    def demo_url(self) -> str:
        return self.base_url + DEMO_PREFIX

    @property
    def guarded_url(self) -> str:
        return self.base_url + GUARDED_PREFIX

    @property
    def reliable_url(self) -> str:
        return self.base_url + RELIABLE_PREFIX

    @property
    def two_ingress_url(self) -> str:
        return self.base_url + TWO_INGRESS_PREFIX

    def config(
        self,
        batching: dict[str, Any] | None = None,
        *,
        reliable_batching: dict[str, Any] | None = None,
        reliable_env: dict[str, str] | None = None,
        two_ingress_args: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The multi-app Serve config, as a YAML file would hold it; the keywords change
        one app's ``user_config`` or ``args`` (the redeploy tests)."""
        common = {"model": str(self.model_dir), "device": "cpu", "num_cpus": 1}
        small = {"ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0}}
        return {
            "applications": [
                {
                    "name": MAIN_APP,
                    "route_prefix": "/",
                    "import_path": "serve_app.app:build_app",
                    "args": {**common, "max_concurrent_requests": 64, "max_audio_seconds": 120},
                    "deployments": [
                        {"name": "Ingress", **small},
                        {
                            "name": "Transcriber",
                            "user_config": batching or BASE_BATCHING,
                            "ray_actor_options": {"num_cpus": 1, "num_gpus": 0},
                        },
                    ],
                },
                {
                    "name": GUARDED_APP,
                    "route_prefix": GUARDED_PREFIX,
                    "import_path": "serve_app.app:build_app",
                    "args": {
                        **common,
                        "api_key": API_KEY,
                        "max_concurrent_requests": 1,
                        "max_concurrent_uploads": 1,
                        "max_upload_bytes": GUARDED_UPLOAD_LIMIT,
                        "retry_after_s": 2,
                        "cors_origins": [ALLOWED_ORIGIN, self.page_origin],
                        "max_requests_per_client": 1,
                        "client_id_header": CLIENT_ID_HEADER,
                    },
                    "deployments": [
                        {"name": "Ingress", **small},
                        {"name": "Transcriber", "ray_actor_options": {"num_cpus": 0.5}},
                    ],
                },
                {
                    "name": RELIABLE_APP,
                    "route_prefix": RELIABLE_PREFIX,
                    "import_path": "serve_app.app:build_app",
                    "runtime_env": {"env_vars": reliable_env or {}},
                    "args": {
                        **common,
                        "max_audio_seconds": 3600,
                        "max_decoded_audio_seconds": 7200,
                        "max_chunks_in_flight_per_request": 1,
                    },
                    "deployments": [
                        {"name": "Ingress", **small},
                        {
                            "name": "Transcriber",
                            "num_replicas": 2,
                            "user_config": reliable_batching or BASE_BATCHING,
                            "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0},
                        },
                    ],
                },
                {
                    "name": TWO_INGRESS_APP,
                    "route_prefix": TWO_INGRESS_PREFIX,
                    "import_path": "serve_app.app:build_app",
                    "args": {**common, **(two_ingress_args or {})},
                    "deployments": [
                        {"name": "Ingress", "num_replicas": 2, **small},
                        {"name": "Transcriber", "ray_actor_options": {"num_cpus": 0.5}},
                    ],
                },
                {
                    "name": REALTIME_APP,
                    "route_prefix": REALTIME_PREFIX,
                    "import_path": "serve_app.app:build_realtime_app",
                    "args": {
                        **common,
                        "transcription_app": MAIN_APP,
                        "max_sessions": 3,
                        "api_key": API_KEY,
                    },
                    "deployments": [{"name": "Realtime", **small}],
                },
                {
                    "name": DEMO_APP,
                    "route_prefix": DEMO_PREFIX,
                    "import_path": "serve_app.app:build_app",
                    "args": {**common, "model": str(DEMO_MODEL_DIR), "max_audio_seconds": 300},
                    "deployments": [
                        {"name": "Ingress", **small},
                        {"name": "Transcriber", "ray_actor_options": {"num_cpus": 0.5}},
                    ],
                },
                {
                    "name": DEMO_REALTIME_APP,
                    "route_prefix": DEMO_REALTIME_PREFIX,
                    "import_path": "serve_app.app:build_realtime_app",
                    "args": {
                        **common,
                        "model": str(DEMO_LIVE_MODEL_DIR),
                        "transcription_app": DEMO_APP,
                        "max_sessions": 2,
                    },
                    "deployments": [{"name": "Realtime", **small}],
                },
                {
                    "name": CALLER_APP,
                    "route_prefix": None,
                    "import_path": "tests.serve.handle_caller:build",
                    "args": {"app_name": MAIN_APP},
                },
            ]
        }

    def apply(self, batching: dict[str, Any] | None = None, **changes: Any) -> None:
        """Deploy (or update) the apps through Serve's REST API, as ``serve deploy``
        does, and wait until they run."""
        from serve_app.deploy import deploy_config

        deploy_config(
            {**self.serve_options(), **self.config(batching, **changes)},
            dashboard_url=self.dashboard_url,
            timeout_s=DEPLOY_TIMEOUT_S,
        )

    def serve_options(self) -> dict[str, Any]:
        """Where Serve listens: one proxy on the head node, loopback, the chosen port."""
        return {
            "proxy_location": "HeadOnly",
            "http_options": {"host": "127.0.0.1", "port": self.port},
        }


@pytest.fixture(scope="session")
def serve_cluster(tiny_model_dir) -> Iterator[ServeCluster]:
    """Start Ray and Serve once, deploy the test apps, and tear everything down."""
    os.environ["RAY_AUTH_MODE"] = "disabled"  # Ray 2.60 turns on token auth locally
    import ray
    from ray import serve
    from ray.job_config import JobConfig

    ray_context = ray.init(
        # Logical CPUs: the apps reserve 8 and a rolling update needs room to start the
        # new replicas before the old ones drain; the box has 2 real cores.
        num_cpus=12,
        include_dashboard=True,  # Serve's REST API (what `serve deploy` talks to) lives there
        dashboard_host="127.0.0.1",
        dashboard_port=_free_port(),
        log_to_driver=False,  # replica logs: /tmp/ray/session_latest/logs/serve/
        # Replicas and the app-build task import tests.serve.handle_caller from here.
        job_config=JobConfig(code_search_path=[str(REPO_ROOT)]),
    )
    try:
        cluster = ServeCluster(
            port=_free_port(),
            model_dir=tiny_model_dir,
            dashboard_url=f"http://{ray_context.dashboard_url}",
        )
        cluster.apply()
        yield cluster
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


@pytest.fixture(scope="session")
def main_stats(serve_cluster) -> Callable[[], dict[str, Any]]:
    """Read the main app's Transcriber counters (one replica in the tests)."""
    from ray import serve

    handle = serve.get_deployment_handle("Transcriber", app_name=MAIN_APP)
    return lambda: handle.stats.remote().result(timeout_s=30)


@pytest.fixture
def http(serve_cluster) -> Iterator[Any]:
    import httpx

    with httpx.Client(base_url=serve_cluster.base_url, timeout=120) as client:
        yield client


@pytest.fixture
def guarded(serve_cluster) -> Iterator[Any]:
    import httpx

    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=serve_cluster.guarded_url, timeout=120, headers=headers) as c:
        yield c


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs the Serve instance is ``serve`` and ``slow``: starting Ray
    and the apps takes tens of seconds, so ``make test-fast`` skips them."""
    for item in items:
        if "serve_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.serve)
            item.add_marker(pytest.mark.slow)
