"""Apply a Serve config to a running Ray cluster the way ``serve deploy`` does.

``serve deploy`` and this module both use Serve's documented REST API on the
dashboard port (``PUT /api/serve/applications/``), which is also the only public way
to update live replicas in place: a changed ``user_config`` reaches ``reconfigure``
without a restart, where ``serve.run`` would replace the replicas. Tests and
benchmarks deploy through here so that they exercise what operators run.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
_APPLICATIONS = "/api/serve/applications/"


def deploy_config(
    config: dict[str, Any],
    *,
    dashboard_url: str = DEFAULT_DASHBOARD,
    timeout_s: float = 180.0,
    poll_s: float = 0.5,
) -> None:
    """PUT ``config`` (a multi-app Serve config as a dict) and wait until every
    application it names is RUNNING; raise with Serve's message if one fails."""
    with httpx.Client(base_url=dashboard_url, timeout=30) as client:
        response = client.put(_APPLICATIONS, json=config)
        if response.status_code != 200:
            raise RuntimeError(
                f"Serve refused the config ({response.status_code}): {response.text}"
            )
        names = {app["name"] for app in config["applications"]}
        deadline = time.monotonic() + timeout_s
        while True:
            states = application_states(client)
            wanted = {name: states.get(name, ("MISSING", "")) for name in names}
            failed = {n: msg for n, (status, msg) in wanted.items() if status == "DEPLOY_FAILED"}
            if failed:
                raise RuntimeError(f"applications failed to deploy: {failed}")
            if all(status == "RUNNING" for status, _ in wanted.values()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"applications not running after {timeout_s} s: {wanted}")
            time.sleep(poll_s)


def application_states(client: httpx.Client) -> dict[str, tuple[str, str]]:
    """Each application's (status, message), from ``GET /api/serve/applications/``."""
    response = client.get(_APPLICATIONS)
    response.raise_for_status()
    applications = response.json().get("applications") or {}
    return {
        name: (app.get("status", "UNKNOWN"), app.get("message", ""))
        for name, app in applications.items()
    }
