"""``reverb_asr_v1`` from the hub as an operator starts it: the first start downloads
into the cache with ``HF_TOKEN``, later starts reuse it, ``HF_HUB_OFFLINE=1`` reads
only the cache, and every failure is one line naming the fix.

The hub is a stand-in on 127.0.0.1 (``tests/hub_server.py``) serving a test model in
the hub's HTTP layout; the real ``huggingface_hub`` client talks to it through
``HF_ENDPOINT``, in a fresh process each time, as a replica would start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app.engine.model_loader import HUB_MODELS
from tests.hub_server import HubRepo, serving

TOKEN = "hf_test_token"

_START = """
import json, sys
from serve_app.engine.model import load_model
from serve_app.wire import ModelLoadError
try:
    model = load_model("reverb_asr_v1", device="cpu", cache_dir=sys.argv[1])
except ModelLoadError as exc:
    print(json.dumps({"error": exc.message}))
else:
    print(json.dumps({"folder": str(model.files.directory)}))
"""


def _start(cache: Path, hub_url: str, **env: str) -> dict[str, str]:
    """One replica start in a fresh process; what it loaded or the error it raised."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    child_env.update(HF_ENDPOINT=hub_url, HF_HUB_DISABLE_TELEMETRY="1", **env)
    done = subprocess.run(
        [sys.executable, "-c", _START, str(cache)],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def hub(tiny_model_dir) -> HubRepo:
    return HubRepo.from_folder(HUB_MODELS["reverb_asr_v1"], tiny_model_dir, token=TOKEN)


def test_first_start_downloads_with_the_token_and_later_starts_reuse_the_cache(hub, tmp_path):
    cache = tmp_path / "models"
    with serving(hub) as url:
        first = _start(cache, url, HF_TOKEN=TOKEN)
        downloads = [path for method, path in hub.requests if "/resolve/" in path]
        assert "folder" in first, first
        assert sorted(p.name for p in Path(first["folder"]).iterdir()) == sorted(hub.files)
        assert len(downloads) >= len(hub.files)
        hub.requests.clear()
        offline = _start(cache, url, HF_TOKEN=TOKEN, HF_HUB_OFFLINE="1")
        assert offline == first
        assert hub.requests == []  # offline: the hub was not asked anything


def test_a_gated_model_without_a_token_names_the_fix(hub, tmp_path):
    with serving(hub) as url:
        outcome = _start(tmp_path / "models", url)
    assert "HF_TOKEN" in outcome["error"] and "\n" not in outcome["error"], outcome


def test_offline_with_an_empty_cache_fails_at_start_naming_the_fix(hub, tmp_path):
    with serving(hub) as url:
        outcome = _start(tmp_path / "models", url, HF_TOKEN=TOKEN, HF_HUB_OFFLINE="1")
        assert hub.requests == []
    error = outcome["error"]
    assert "offline" in error and "HF_HUB_OFFLINE" in error and "\n" not in error, error
