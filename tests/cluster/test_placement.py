"""The production config placed by Ray on a multi-node cluster, simulated on this
machine: a CPU head, a CPU worker and a worker that advertises one GPU (a fake one:
``--num-gpus 1`` with no CUDA; the Transcriber is told ``device: cpu``).

What it shows: the Transcriber (``num_gpus: 1``) lands only on the GPU node, the
Ingress replicas (``num_gpus: 0``) only on CPU nodes, the autoscaling bounds are the
config's, and the GPU-placed replica serves. What it does not: CUDA, GPU memory,
traffic between machines, a node failing, or Ray's autoscaler adding nodes (none runs
here, so a scale-up past the GPUs present would stay pending).
"""

from __future__ import annotations

import httpx
import pytest
from ray_cli import demo_clip, free_port, production_on, ray_cli_cluster
from test_serve_deploy import APP, TRANSCRIPTIONS

pytestmark = pytest.mark.slow

NODES = [(4, 0), (4, 0), (4, 1)]
"""(CPUs, GPUs) per node, head first: the GPU node has just the Transcriber's 4 CPUs."""

_PLACEMENT = """
from ray.util.state import list_actors
gpu_nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]
alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000, detail=True)
print(json.dumps({"gpu_nodes": gpu_nodes,
                  "actors": [[a.name or a.class_name, a.node_id] for a in alive]}))
"""


def test_gpu_replicas_only_on_the_gpu_node_and_ingress_on_cpu_nodes(
    tmp_path_factory, tiny_model_dir, tmp_path
):
    port = free_port()
    config = production_on(tiny_model_dir, port, keep_gpus=True)
    with ray_cli_cluster(tmp_path_factory.mktemp("rp"), NODES) as cluster:
        cluster.serve_deploy(config, tmp_path / "placement.yaml")
        cluster.wait_running(APP)
        placed = cluster.driver(_PLACEMENT)
        (gpu_node,) = placed["gpu_nodes"]
        where = {name: node for name, node in placed["actors"]}
        transcribers = [node for name, node in where.items() if "#Transcriber#" in name]
        ingresses = [node for name, node in where.items() if "#Ingress#" in name]
        assert transcribers == [gpu_node], placed
        assert len(ingresses) == 2 and gpu_node not in ingresses, placed
        apps = httpx.get(cluster.dashboard_url + "/api/serve/applications/", timeout=30).json()
        deployments = apps["applications"][APP]["deployments"]
        autoscaling = deployments["Transcriber"]["deployment_config"]["autoscaling_config"]
        assert (autoscaling["min_replicas"], autoscaling["max_replicas"]) == (1, 4)
        clip = demo_clip()
        answer = httpx.post(
            f"http://127.0.0.1:{port}{TRANSCRIPTIONS}",
            files={"file": ("a.opus", clip)},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        print(
            f"\nTranscriber on the GPU node {gpu_node[:8]}; Ingress on {[n[:8] for n in ingresses]}"
        )
