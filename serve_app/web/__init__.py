"""The browser page at ``/``: plain HTML, CSS and ES modules, no build step, no CDN.

The files live in this package (so a wheel or the Docker image carries them) and are
served by the Ingress with :func:`serve_app.serve.web_routes.add_web_routes`.
"""

from pathlib import Path

WEB_DIR = Path(__file__).parent
"""Where index.html and the assets under ``ui/`` are."""
