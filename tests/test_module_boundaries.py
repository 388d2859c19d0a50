"""Which heavy libraries each side of the Serve app loads.

The CPU Ingress must not import torch (hundreds of MB per replica, seconds of start
time); the GPU Transcriber's own code must not import a web framework. Ray Serve
itself imports Starlette and FastAPI, so the second check looks at the project's
modules the Transcriber loads, not at ``sys.modules`` as a whole. Each check runs in a
fresh interpreter so that other tests' imports cannot hide a regression.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _loaded_after(module: str) -> dict[str, list[str]]:
    """Import ``module`` in a fresh interpreter; report what got loaded."""
    probe = f"""
import ast, json, sys
import {module}
ours = sorted(m for m in sys.modules if m == "serve_app" or m.startswith("serve_app."))
web = []
for name in ours:
    path = getattr(sys.modules[name], "__file__", None)
    if not path:
        continue
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(n.split(".")[0] in ("starlette", "fastapi") for n in names):
            web.append(name)
            break
print(json.dumps({{"torch": "torch" in sys.modules, "ours": ours, "web": web}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_ingress_does_not_import_torch():
    loaded = _loaded_after("serve_app.serve.ingress")
    assert loaded["torch"] is False
    assert "serve_app.pipeline" in loaded["ours"]


def test_the_transcriber_does_not_import_a_web_framework():
    loaded = _loaded_after("serve_app.serve.transcriber_deployment")
    assert loaded["torch"] is True  # it is the model side
    assert loaded["web"] == [], loaded["web"]


@pytest.mark.parametrize("module", ["serve_app.wire", "serve_app.pipeline"])
def test_wire_types_and_pipeline_import_neither_torch_nor_a_web_framework(module):
    loaded = _loaded_after(module)
    assert loaded["torch"] is False
    assert loaded["web"] == []
    assert not any(m.startswith("serve_app.serve") for m in loaded["ours"])
