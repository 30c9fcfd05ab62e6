"""A unix-socket engine that restarts leaves no dead connection in docker-py's pool.

``tasks.base.fresh_client`` pings no unix-socket engine before a job on the strength of
this: the kernel closes the old engine's end of every connection, urllib3 sees a closed
pooled connection when it takes it out of the pool and opens a new one. A stand-in engine
(a plain HTTP server on a unix socket, in its own process) is killed and started again
between two calls of one client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from tasks.base import UNIX_BASE_URL

_SERVER = textwrap.dedent("""
    import http.server, json, os, socketserver, sys

    class Engine(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as dockerd

        def answer(self, status):
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            body = json.dumps({"Id": str(os.getpid()), "Warnings": []}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.answer(200)

        def do_POST(self):
            self.answer(201)

        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    Server(sys.argv[1], Engine).serve_forever()
""")


class FakeEngine:
    def __init__(self, folder: Path) -> None:
        self.socket = folder / "engine.sock"
        self.process: subprocess.Popen | None = None

    def start(self) -> int:
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen([sys.executable, "-c", _SERVER, str(self.socket)])
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            assert time.monotonic() < deadline, "the stand-in engine did not start"
            time.sleep(0.02)
        return self.process.pid

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)  # like a crash: nothing closed politely
        self.process.wait(10)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[FakeEngine]:
    fake = FakeEngine(tmp_path)
    yield fake
    if fake.process is not None and fake.process.poll() is None:
        fake.kill()


def test_a_restarted_unix_engine_answers_the_next_call_without_a_ping(engine: FakeEngine):
    first = engine.start()
    client = docker.DockerClient(base_url=f"unix://{engine.socket}", version="1.41", timeout=5)
    assert client.api.base_url == UNIX_BASE_URL  # the clients fresh_client does not ping
    # Connections of two kinds of request in the pool (docker-py keeps a pool per URL).
    assert client.api.inspect_image("busybox")["Id"] == str(first)
    assert client.api.create_container("busybox")["Id"] == str(first)

    engine.kill()
    second = engine.start()
    assert second != first
    assert client.api.inspect_image("busybox")["Id"] == str(second)
    assert client.api.create_container("busybox")["Id"] == str(second)


def test_a_unix_engine_that_is_down_fails_the_first_call_as_a_ping_would(engine: FakeEngine):
    engine.start()
    client = docker.DockerClient(base_url=f"unix://{engine.socket}", version="1.41", timeout=5)
    client.api.inspect_image("busybox")
    engine.kill()
    os.unlink(engine.socket)
    with pytest.raises(requests.exceptions.ConnectionError):
        client.api.inspect_image("busybox")
    with pytest.raises(requests.exceptions.ConnectionError):
        client.ping()
