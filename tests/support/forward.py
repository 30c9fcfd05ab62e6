"""A TCP forwarder: lets a process in a test network namespace reach a loopback-only service."""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import threading


class _Pipe(socketserver.BaseRequestHandler):
    target: tuple[str, int]

    def handle(self) -> None:
        with socket.create_connection(self.target, timeout=5) as upstream:
            upstream.settimeout(None)
            peers = {self.request: upstream, upstream: self.request}
            while True:
                readable, _, _ = select.select(list(peers), [], [], 1.0)
                for sock in readable:
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    peers[sock].sendall(data)


class Forwarder:
    """Listen on ``listen`` and relay every connection to ``target`` (both on this machine)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        handler = type("Pipe", (_Pipe,), {"target": target})
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(listen, handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Forwarder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.server.shutdown()
            self.server.server_close()
