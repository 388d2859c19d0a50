"""The Ray Serve shell around the engine and the pipeline: config, HTTP, deployments.

What a transcript is lives in :mod:`serve_app.engine`; how a request runs lives in
:mod:`serve_app.pipeline`. This package moves audio and chunks between processes and
speaks OpenAI-shaped HTTP. Only ``ingress``, ``transcriber_deployment`` and
``metrics`` import Ray; the HTTP modules are unit-tested without a cluster.
"""
