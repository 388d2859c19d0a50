"""A WebSocket client that never reads, for the slow-reader tests."""

from __future__ import annotations

import socket


class NeverReads:
    """A WebSocket client that completes the handshake and then only writes: a raw
    socket driven by websockets' sans-I/O protocol, so nothing reads on its behalf."""

    def __init__(
        self, url: str, subprotocols: list[str] | None = None, write_timeout_s: float = 30
    ) -> None:
        from websockets.client import ClientProtocol
        from websockets.typing import Subprotocol
        from websockets.uri import parse_uri

        uri = parse_uri(url)
        offered = [Subprotocol(p) for p in subprotocols or []]
        self.protocol = ClientProtocol(uri, subprotocols=offered or None)
        self.sock = socket.create_connection((uri.host, uri.port), timeout=write_timeout_s)
        self.protocol.send_request(self.protocol.connect())
        self.sock.sendall(b"".join(self.protocol.data_to_send()))
        while self.protocol.state.name == "CONNECTING":
            self.protocol.receive_data(self.sock.recv(65536))
        assert self.protocol.state.name == "OPEN", self.protocol.handshake_exc

    def send(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def close(self) -> None:
        self.sock.close()
