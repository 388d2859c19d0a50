"""Entry point of ``python -m scripts.demo_model`` (run from the repository root)."""

import sys

from scripts.demo_model.cli import main

sys.exit(main())
