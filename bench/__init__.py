"""Benchmarks, run from the repository root as modules: ``python -m bench.engine_sweep``.

Run that way, the repository root is on ``sys.path``, so the scripts import
``bench._common``, ``scripts.make_test_model`` and ``serve_app`` by plain imports.
"""
