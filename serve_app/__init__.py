"""reverb-serve: serve Rev's Reverb ASR over HTTP with Ray Serve.

The engine (``serve_app.engine``) is plain Python + torch and never imports Ray,
so it can be tested and benchmarked on its own.
"""

__version__ = "0.1.0"
