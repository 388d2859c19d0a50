"""A Hugging Face hub stand-in on 127.0.0.1: one gated model repository, served in the
hub's HTTP layout (``/api/models/<repo>/revision/<rev>`` and
``/<repo>/resolve/<rev>/<file>``), so the real ``huggingface_hub`` client downloads
from it when ``HF_ENDPOINT`` points here. No network, no mock of the client: only the
server end is ours. Requests are recorded, so a test can tell a download from a cache
hit."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TextIO

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, bytes]
    token: str | None
    """The one bearer token that may read it (the repository is gated); None: public."""
    requests: list[tuple[str, str]] = field(default_factory=list)
    log: TextIO | None = None
    """Where each request is also written as a line, for a caller in another process."""

    @classmethod
    def from_folder(cls, repo_id: str, folder: Path, token: str | None) -> HubRepo:
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        return cls(repo_id, files, token)


def _git_oid(data: bytes) -> str:
    """The blob id git (and so the hub) gives a file that is not in LFS."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _handler(repo: HubRepo) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            repo.requests.append((self.command, self.path))
            if repo.log:
                repo.log.write(f"{time.time():.3f} {self.command} {self.path}\n")
            gated = repo.token is not None
            if gated and self.headers.get("authorization") != f"Bearer {repo.token}":
                self._send(401, b'{"error": "gated"}', {"X-Error-Code": "GatedRepo"}, body)
                return
            path = self.path.split("?", 1)[0]
            info = f"/api/models/{repo.repo_id}/revision/"
            tree = f"/api/models/{repo.repo_id}/tree/"
            resolve = f"/{repo.repo_id}/resolve/"
            if path.startswith(info):
                siblings = [{"rfilename": name} for name in repo.files]
                payload = {"id": repo.repo_id, "sha": COMMIT, "siblings": siblings}
                self._send(200, json.dumps(payload).encode(), {}, body)
            elif path.startswith(tree):
                entries = [
                    {"type": "file", "path": name, "size": len(data), "oid": _git_oid(data)}
                    for name, data in repo.files.items()
                ]
                self._send(200, json.dumps(entries).encode(), {}, body)
            elif path.startswith(resolve) and path.count("/") >= 5:
                name = path[len(resolve) :].split("/", 1)[1]
                if name not in repo.files:
                    self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, body)
                    return
                data = repo.files[name]
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{_git_oid(data)}"'}
                self._send(200, data, headers, body)
            else:
                self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, body)

        def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler


@contextmanager
def serving(repo: HubRepo, port: int = 0) -> Iterator[str]:
    """The stand-in hub for ``repo`` on a loopback port (free by default); yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(repo))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def main(argv: list[str]) -> None:
    """``python tests/hub_server.py PORT REPO FOLDER LOG``: a public stand-in hub in
    its own process until killed, each request appended to LOG (docker/smoke.sh)."""
    port, repo_id, folder, log_path = argv
    repo = HubRepo.from_folder(repo_id, Path(folder), token=None)
    with open(log_path, "a", buffering=1) as repo.log, serving(repo, int(port)):
        threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
