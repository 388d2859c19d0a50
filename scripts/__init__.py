"""Project scripts (model makers, the demo recipe), importable as ``scripts.<name>``
from the repository root so that tests and benchmarks load them by a plain import."""
