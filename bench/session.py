"""Interactive sessions vs a direct docker-py exec socket: keystroke echo and `cat` throughput.

A private stack (API + workers of this checkout, on its own Redis database and state
folder, as the integration suite starts it) serves the sessions; the direct path is
docker-py's hijacked exec socket on the same engine. Measured, interleaved per round:

- echo: one keystroke into `cat` on a tty and back (the tty echoes it), 1,000 times;
  median and p99 of the round trip;
- throughput: `cat` of a 64 MiB file (no tty, so the bytes pass unchanged), bytes/s, while
  the VmRSS of the API's gunicorn workers and of the query worker is sampled every 20 ms.

Run: `source /work/main/.state/run/env && .venv/bin/python -m bench.session`
(knobs: DOCKYARD_BENCH_SESSION_REDIS_URL, default redis://127.0.0.1:6379/11;
DOCKYARD_BENCH_KEYSTROKES, 1000; DOCKYARD_BENCH_SESSION_MIB, 64; DOCKYARD_BENCH_ROUNDS, 3).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import docker
import redis
import requests
from simple_websocket import Client, ConnectionClosed

from app.engine.sessions import Demultiplexer
from bench.common import (
    ROOT,
    TEST_IMAGE,
    Samples,
    docker_host,
    machine_summary,
    ms,
    table,
    with_redis_password,
)
from bench.streams import RssSampler
from tests.support.stack import Stack

REDIS_URL = os.environ.get("DOCKYARD_BENCH_SESSION_REDIS_URL", "redis://127.0.0.1:6379/11")
KEYSTROKES = int(os.environ.get("DOCKYARD_BENCH_KEYSTROKES", "1000"))
SIZE_MIB = int(os.environ.get("DOCKYARD_BENCH_SESSION_MIB", "64"))
ROUNDS = int(os.environ.get("DOCKYARD_BENCH_ROUNDS", "3"))
STATE_DIR = ROOT / ".state" / "bench-session"
NAME = "dy-bench-session-" + uuid.uuid4().hex[:6]
TOKEN = "dy_bench-" + uuid.uuid4().hex


def private_stack() -> Stack:
    env = {**os.environ, "DOCKYARD_REDIS_URL": REDIS_URL, "DOCKYARD_STATE_DIR": str(STATE_DIR),
           "DOCKYARD_SECRET_KEY": "bench-" + uuid.uuid4().hex, "DOCKYARD_ADMIN_TOKEN": TOKEN,
           "DOCKYARD_LOCAL_ENGINE": docker_host(), "DOCKYARD_TOKEN_CACHE_SECONDS": "2"}
    # this database is the benchmark's own
    redis.Redis.from_url(with_redis_password(REDIS_URL)).flushdb()
    stack = Stack(env, STATE_DIR / "log")
    stack.start()
    return stack


# -- the session path ---------------------------------------------------------------------

def open_session(stack: Stack, body: dict) -> Client:
    answer = requests.post(f"{stack.url}/api/v1/hosts/local/containers/{NAME}/sessions",
                           json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    answer.raise_for_status()
    return Client.connect(stack.url.replace("http://", "ws://") + answer.json()["url"],
                          receive_bytes=1 << 20)


def session_echo(stack: Stack, samples: Samples, count: int) -> None:
    ws = open_session(stack, {"cmd": ["cat"], "tty": True})
    try:
        for i in range(count):
            key = bytes([97 + i % 26])
            started = time.perf_counter()
            ws.send(key)
            while ws.receive() != key:
                pass
            samples.add(time.perf_counter() - started)
    finally:
        ws.close()


def session_cat(stack: Stack) -> tuple[float, int]:
    ws = open_session(stack, {"cmd": ["cat", "/blob"], "tty": False})
    received = 0
    started = time.perf_counter()
    with contextlib.suppress(ConnectionClosed):
        while True:
            message = ws.receive()
            if isinstance(message, bytes):
                received += len(message)
            elif message is not None and "exit" in json.loads(message):
                break
    elapsed = time.perf_counter() - started
    with contextlib.suppress(ConnectionClosed):
        ws.close()
    return elapsed, received


# -- the direct path: docker-py's hijacked exec socket --------------------------------------

def direct_socket(client: docker.DockerClient, cmd: list[str], tty: bool) -> socket.socket:
    created = client.api.exec_create(NAME, cmd, stdin=True, stdout=True, stderr=True, tty=tty)
    sock = client.api.exec_start(created["Id"], tty=tty, socket=True)
    raw = getattr(sock, "_sock", sock)
    raw.settimeout(None)
    return raw


def direct_echo(client: docker.DockerClient, samples: Samples, count: int) -> None:
    raw = direct_socket(client, ["cat"], tty=True)
    try:
        for i in range(count):
            key = bytes([97 + i % 26])
            started = time.perf_counter()
            raw.sendall(key)
            while raw.recv(1 << 16) != key:
                pass
            samples.add(time.perf_counter() - started)
    finally:
        raw.close()


def direct_cat(client: docker.DockerClient) -> tuple[float, int]:
    raw = direct_socket(client, ["cat", "/blob"], tty=False)
    demux = Demultiplexer()  # as the session's worker does: count the payload only
    received = 0
    started = time.perf_counter()
    while True:
        data = raw.recv(1 << 20)
        if not data:
            break
        received += len(demux.feed(data))
    elapsed = time.perf_counter() - started
    raw.close()
    return elapsed, received


def main() -> None:
    client = docker.DockerClient(base_url=docker_host())
    client.containers.run(TEST_IMAGE, ["sleep", "3600"], name=NAME, detach=True,
                          labels={"dockyard.bench": "session"})
    stack = None
    try:
        client.containers.get(NAME).exec_run(
            ["dd", "if=/dev/urandom", "of=/blob", "bs=1M", f"count={SIZE_MIB}"])
        stack = private_stack()
        groups = {"api": children_of(stack.procs["api"].pid),
                  "query worker": [stack.procs["worker-query"].pid]}
        cpu_groups = {**groups, "this client": [os.getpid()],
                      "redis": pids_named("redis-server"), "dockerd": pids_named("dockerd")}
        cpu = {"session": dict.fromkeys(cpu_groups, 0.0), "direct": dict.fromkeys(cpu_groups, 0.0)}
        echo = {"session": Samples("session"), "direct": Samples("direct")}
        cat = {"session": [], "direct": []}
        rss = {name: 0 for name in groups}
        per_round = max(1, KEYSTROKES // ROUNDS)
        for _ in range(ROUNDS):
            direct_echo(client, echo["direct"], per_round)
            session_echo(stack, echo["session"], per_round)
            result, used = cpu_of(cpu_groups, lambda: direct_cat(client))
            cat["direct"].append(result)
            cpu["direct"] = {k: cpu["direct"][k] + v for k, v in used.items()}
            with RssSampler(groups) as sampler:
                result, used = cpu_of(cpu_groups, lambda: session_cat(stack))
            cat["session"].append(result)
            cpu["session"] = {k: cpu["session"][k] + v for k, v in used.items()}
            for name in groups:
                rss[name] = max(rss[name], sampler.peak[name] - sampler.baseline[name])
        print(report(echo, cat, rss))
        print("\nCPU seconds spent per 64 MiB cat (mean over rounds):\n")
        print(table(("process", "direct", "session"),
                    [(name, f"{cpu['direct'][name] / ROUNDS:.2f}",
                      f"{cpu['session'][name] / ROUNDS:.2f}") for name in cpu_groups]))
    finally:
        if stack is not None:
            stack.stop()
        client.containers.get(NAME).remove(force=True)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (all their threads) so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def cpu_of(groups: dict[str, list[int]], run) -> tuple[object, dict[str, float]]:
    before = {name: cpu_seconds(pids) for name, pids in groups.items()}
    result = run()
    return result, {name: cpu_seconds(pids) - before[name] for name, pids in groups.items()}


def pids_named(name: str) -> list[int]:
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True,
                           check=False).stdout
    return [int(pid) for pid in found.split()]


def children_of(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True,
                           check=False).stdout
    return [int(child) for child in found.split()]


def report(echo: dict[str, Samples], cat: dict[str, list[tuple[float, int]]],
           rss: dict[str, int]) -> str:
    def rate(runs: list[tuple[float, int]]) -> float:
        return sum(size for _, size in runs) / sum(t for t, _ in runs)

    direct, session = echo["direct"], echo["session"]
    rows = [
        ("echo median (ms)", ms(direct.median), ms(session.median),
         f"≤ direct + 5 ms: {'met' if session.median <= direct.median + 0.005 else 'MISSED'}"),
        ("echo p99 (ms)", ms(direct.pct(99)), ms(session.pct(99)),
         f"≤ direct + 15 ms: {'met' if session.pct(99) <= direct.pct(99) + 0.015 else 'MISSED'}"),
        (f"cat {SIZE_MIB} MiB (MiB/s)", f"{rate(cat['direct']) / 2**20:.0f}",
         f"{rate(cat['session']) / 2**20:.0f}",
         f"≥ 0.5x direct: {'met' if rate(cat['session']) >= 0.5 * rate(cat['direct']) else 'MISSED'}"
         f" ({rate(cat['session']) / rate(cat['direct']):.2f}x)"),
    ]
    rows += [(f"peak RSS growth during the session cat: {name}", "", f"{kib / 1024:.1f} MiB", "")
             for name, kib in rss.items()]
    sizes = {size for runs in cat.values() for _, size in runs}
    return (f"{machine_summary()}; {len(direct.values)} keystrokes per path, {ROUNDS} rounds; "
            f"bytes received per cat: {sorted(sizes)}\n\n"
            + table(("", "direct docker-py exec", "session (WebSocket → API → Redis → worker)",
                     "target"), rows))


if __name__ == "__main__":
    main()
