"""A file that reports whether anything opened it: a FIFO watched by a thread.

Status codes alone cannot show that a decoder never touched a file it was pointed
at (an attack can fail late, after reading). A FIFO can: a writer's non-blocking open
succeeds only while some process has the FIFO open for reading, so a thread that
keeps trying notices any open, then closes its end so the reader sees EOF at once
and nothing blocks.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path


class Canary:
    """``with Canary(path) as canary: ...; assert not canary.opened``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Canary:
        os.mkfifo(self.path)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                time.sleep(0.001)
                continue
            self.opened = True
            os.close(fd)  # the reader gets EOF and moves on
            return
