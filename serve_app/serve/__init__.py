"""The Ray Serve shell around the engine: config, HTTP API, deployments and metrics.

Everything that decides *what* a transcript is lives in :mod:`serve_app.engine`; this
package only moves audio and chunks between processes, enforces limits and speaks
OpenAI-shaped HTTP. Modules that do not import Ray (config, errors, limits, form,
pipeline, openapi, http_api) can be unit-tested without a cluster.
"""
