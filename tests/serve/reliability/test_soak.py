"""The soak in CI size: a minute of mixed traffic against the ``reliable`` app, every
response checked against its clip's solo transcript, every Serve process's RSS sampled;
then the negative control, which must be caught (``bench/soak.py`` has the details and
the 30-minute command)."""

from __future__ import annotations

import pytest

from bench.soak import LEAK_ENV, RSS_LIMIT_MB, report_md, run_soak

pytestmark = pytest.mark.serve


def test_a_minute_of_mixed_traffic_loses_and_mixes_up_nothing(serve_cluster):
    """Pass: every valid request 200 with its solo transcript (plain and SSE) or a 503
    with Retry-After, every invalid upload 415, clients leaving mid-upload and
    mid-stream harm nobody; no Serve process grows by 100 MB after the warm-up."""
    result = run_soak(
        serve_cluster.reliable_url, serve_cluster.dashboard_url, seconds=60, fraction=0.5
    )
    print("\n" + report_md(result))
    assert result["broken"] == 0, result["broken_examples"]
    assert result["outcomes"].get("valid / 200 right", 0) >= 20
    assert result["rss_growth_mb"], "no process was sampled"
    assert result["rss_max_growth_mb"] < RSS_LIMIT_MB


def test_the_leak_detector_catches_a_leaking_ingress(serve_cluster):
    """Negative control. Pass: with the test-only leak switched on, the Ingress keeps
    8 MB per request; the soak's RSS check flags that Ingress and fails."""
    serve_cluster.apply(reliable_env={LEAK_ENV: "8192"})
    try:
        result = run_soak(
            serve_cluster.reliable_url, serve_cluster.dashboard_url, seconds=40, fraction=0.5
        )
    finally:
        serve_cluster.apply()
    print("\n" + report_md(result))
    flagged = {
        name.split("#")[0] for name, mb in result["rss_growth_mb"].items() if mb >= RSS_LIMIT_MB
    }
    assert flagged == {"ServeReplica:reliable:Ingress"}, result["rss_growth_mb"]
    assert not result["passed"]
