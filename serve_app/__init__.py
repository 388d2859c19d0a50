"""reverb-serve: serve Rev's Reverb ASR over HTTP with Ray Serve.

The engine (``serve_app.engine``) is plain Python + torch and never imports Ray,
so it can be tested and benchmarked on its own.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("reverb-serve")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"
