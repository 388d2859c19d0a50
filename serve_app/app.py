"""The Serve application: ``serve run configs/local.yaml`` imports ``build_app`` from here.

``build_app(args)`` validates the config file's ``args`` with :class:`AppConfig` and
wires two deployments: a CPU ``Ingress`` (HTTP + Python handle) and a ``Transcriber``
(the model, on a GPU in production) that the Ingress calls once per audio chunk.
Resource and sizing defaults are set here from the config; a Serve config file's
``deployments:`` section can still override any of them (``ray_actor_options``,
``user_config`` and ``autoscaling_config`` are replaced wholesale, not merged).
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application
from ray.serve.config import BackpressureConfig

from serve_app.serve.config import AppConfig
from serve_app.serve.ingress import Ingress
from serve_app.serve.transcriber_deployment import Transcriber

INGRESS_NAME = "Ingress"
TRANSCRIBER_NAME = "Transcriber"


def build_app(args: dict[str, Any]) -> Application:
    """Validate ``args`` and bind the Ingress to the Transcriber."""
    config = AppConfig.model_validate(args or {}).with_absolute_model_path()
    # No unbounded queue: Serve's own queues are backstops sized above our limits. With a
    # bound of 16 on the Ingress, Serve shed 38 of a 96-request burst that its replica
    # had room for (it seems to count calls still being routed), so the bound is large.
    backpressure = BackpressureConfig(status_code=503, retry_after_s=config.retry_after_s)
    transcriber = Transcriber.options(
        ray_actor_options={"num_cpus": config.num_cpus, "num_gpus": config.transcriber_num_gpus},
        max_queued_requests=config.transcriber_max_queued_requests,
        backpressure_config=backpressure,
    ).bind(config)
    ingress = Ingress.options(
        # A rolling update drains an old Ingress; let its longest request finish.
        graceful_shutdown_timeout_s=config.request_timeout_s + 10,
        max_ongoing_requests=config.ingress_max_ongoing_requests,
        max_queued_requests=config.ingress_max_ongoing_requests,
        backpressure_config=backpressure,
    )
    return ingress.bind(transcriber, config)


def build_realtime_app(args: dict[str, Any]) -> Application:
    """The realtime app (``/v1/realtime``): live sessions beside a transcription app."""
    from serve_app.serve.realtime_config import RealtimeConfig
    from serve_app.serve.realtime_deployment import Realtime

    config = RealtimeConfig.model_validate(args or {}).with_absolute_model_path()
    return Realtime.options(
        ray_actor_options={"num_cpus": config.num_cpus, "num_gpus": config.transcriber_num_gpus},
        # A WebSocket is one long request: the session limit is ours, not Serve's queue.
        max_ongoing_requests=config.max_sessions + 8,
    ).bind(config)
