"""Engine calls per named provision: a private stack whose engine socket is a counting proxy.

A unix-socket proxy in front of the engine counts every HTTP request line the API's and
workers' docker clients send through it; a private stack of this checkout (API, workers,
its own Redis database) provisions ``--rounds`` named busybox containers with
``?wait=30`` one after the other, and the calls seen during each provision are printed per
method and path (container ids and names folded), with the median per provision.

    source .state/run/env
    DOCKYARD_BENCH_REDIS_URL=redis://127.0.0.1:6379/10 .venv/bin/python -m bench.provision_calls \
        [--bench-spec]

``--bench-spec`` provisions bench/provision.py's container instead (busybox httpd, a port
published on 127.0.0.1, a read-only bind mount, which the worker's bind check walks).
The database given is flushed first: give one nobody else uses.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import socket
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import docker
import redis
import requests

from bench.common import ROOT, TEST_IMAGE, docker_host, machine_summary, table, with_redis_password
from tests.support.stack import Stack

# Not anchored to a line start: on a kept-alive connection a request line follows the last
# request's body (a POST's JSON) with nothing between; a JSON body escapes CR LF, so the
# pattern cannot match inside one.
_REQUEST = re.compile(rb"(GET|POST|PUT|DELETE|HEAD) (/[^ \r\n]*) HTTP/1\.[01]\r\n")
_ID = re.compile(r"/[0-9a-f]{64}")


class CountingProxy:
    """Forwards a unix socket to the engine's, counting request lines (method, path)."""

    def __init__(self, listen: Path, upstream: str) -> None:
        self.listen = listen
        self.upstream = upstream
        self.calls: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def start(self) -> None:
        self.listen.unlink(missing_ok=True)
        self._server.bind(str(self.listen))
        self._server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine.connect(self.upstream)
            threading.Thread(target=self._pump, args=(client, engine, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(engine, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        tail = b""
        try:
            while data := source.recv(65536):
                if count:
                    window = tail + data
                    for match in _REQUEST.finditer(window):
                        if match.end() > len(tail):  # not already counted in the last window
                            path = match.group(2).decode(errors="replace").split("?", 1)[0]
                            with self._lock:
                                self.calls.append((time.monotonic(), match.group(1).decode(),
                                                   path))
                    tail = window[-256:]
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def between(self, start: float, end: float) -> list[tuple[str, str]]:
        with self._lock:
            return [(m, p) for t, m, p in self.calls if start <= t <= end]

    def close(self) -> None:
        self._server.close()
        self.listen.unlink(missing_ok=True)


def fold(path: str, names: list[str]) -> str:
    path = re.sub(r"^/v1\.\d+", "", _ID.sub("/<id>", path))
    for name in names:
        path = path.replace(f"/{name}/", "/<name>/").replace(f"={name}", "=<name>")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--bench-spec", action="store_true",
                        help="bench/provision.py's container: a published port, a bind mount")
    args = parser.parse_args()
    redis_url = os.environ.get("DOCKYARD_BENCH_REDIS_URL")
    if not redis_url:
        sys.exit("set DOCKYARD_BENCH_REDIS_URL to a Redis database nobody else uses")
    upstream = docker_host().removeprefix("unix://")
    state = ROOT / ".state" / "bench-provision-calls"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    proxy = CountingProxy(state / "docker.sock", upstream)
    proxy.start()
    binds = state / "binds"
    (binds / "www").mkdir(parents=True)
    (binds / "www" / "index.html").write_text("dockyard bench\n")
    extra: dict = {"command": ["sleep", "300"]}
    if args.bench_spec:
        extra = {"command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                 "ports": [{"container_port": 8080, "host_ip": "127.0.0.1"}],
                 "volumes": [{"source": str(binds / "www"), "target": "/www",
                              "read_only": True, "type": "bind"}]}
    token = "dy_bench-" + uuid.uuid4().hex
    env = {**os.environ, "DOCKYARD_REDIS_URL": redis_url, "DOCKYARD_STATE_DIR": str(state),
           "DOCKYARD_SECRET_KEY": "bench-" + uuid.uuid4().hex, "DOCKYARD_ADMIN_TOKEN": token,
           "DOCKYARD_LOCAL_ENGINE": f"unix://{proxy.listen}", "PYTHONPATH": str(ROOT),
           "DOCKYARD_BIND_ROOTS": str(binds)}
    redis.Redis.from_url(with_redis_password(redis_url)).flushdb()
    stack = Stack(env, state / "log")
    engine = docker.DockerClient(base_url=docker_host())
    names: list[str] = []
    per_round: list[collections.Counter[str]] = []
    try:
        stack.start()
        base = stack.url + "/api/v1"
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {token}"
        for index in range(args.rounds + 1):
            name = f"dy-bench-calls-{uuid.uuid4().hex[:8]}"
            names.append(name)
            time.sleep(0.5)
            started = time.monotonic()
            reply = http.post(f"{base}/hosts/local/containers", params={"wait": 30}, json={
                "image": TEST_IMAGE, "name": name, **extra})
            ended = time.monotonic()
            if reply.status_code != 200 or reply.json()["state"] != "succeeded":
                sys.exit(f"provision failed: {reply.status_code} {reply.text[:300]}")
            if index == 0:
                continue  # warm-up: the engine clients' first connections
            per_round.append(collections.Counter(
                f"{method} {fold(path, names)}" for method, path in proxy.between(started, ended)))
    finally:
        stack.stop()
        for name in names:
            with contextlib.suppress(docker.errors.NotFound):
                engine.containers.get(name).remove(force=True)
        proxy.close()
    calls = sorted({call for counter in per_round for call in counter})
    print(machine_summary())
    print(f"checkout {ROOT}; {len(per_round)} named provisions with ?wait=30 (after one "
          f"warm-up){' of bench/provision.py' + chr(39) + 's container' if args.bench_spec else ''}, "
          "engine requests seen by the proxy while each request was open\n")
    rows = [[f"`{call}`", f"{statistics.median(c[call] for c in per_round):g}",
             f"{min(c[call] for c in per_round)}-{max(c[call] for c in per_round)}"]
            for call in calls]
    totals = [sum(c.values()) for c in per_round]
    rows.append(["**total**", f"**{statistics.median(totals):g}**", f"{min(totals)}-{max(totals)}"])
    print(table(["engine request", "median per provision", "range"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
