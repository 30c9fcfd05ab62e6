"""The API's workers each listen on a socket of their own (SO_REUSEPORT).

With one shared socket, whichever worker woke first accepted: a client's pool of keep-alive
connections landed mostly on one process (56 of 64 seen), which then saturated its core.
Each worker now has its own listener and the kernel spreads connections over them; a
second API started on a taken address fails instead of sharing it unnoticed.
"""

from __future__ import annotations

import collections
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.stack import ROOT, VENV_BIN, free_port


def _gunicorn(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"),
             "--bind", f"127.0.0.1:{port}", "--workers", "2", "wsgi:app"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)


def _owners(state: str, port: int) -> list[int]:
    """The pid owning each socket in ``state`` on local ``port`` (ss); a connection still in
    a listener's queue has no owner yet and is left out."""
    out = subprocess.run(["ss", "-tnpH", "state", state, f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return [int(line.split("pid=")[1].split(",")[0]) for line in out.splitlines()
            if "pid=" in line]


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return {int(p) for p in out.split()}


@pytest.fixture
def api(stack_env: dict[str, str], state_dir: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    port = free_port()
    proc = _gunicorn(stack_env, port, state_dir / f"listeners-{port}.log")
    try:
        deadline = time.monotonic() + 30
        while len(_owners("listening", port)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_each_worker_listens_and_connections_are_spread_over_them(api):
    port, proc = api
    workers = _children(proc.pid)
    listeners = _owners("listening", port)
    assert len(workers) == 2 and sorted(listeners) == sorted(workers)  # none in the master
    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    conns = []
    try:
        for _ in range(64):
            conns.append(socket.create_connection(("127.0.0.1", port)))
        deadline = time.monotonic() + 10
        while len(_owners("established", port)) < 64 and time.monotonic() < deadline:
            time.sleep(0.1)  # accepted by each worker's main thread
        per_worker = collections.Counter(_owners("established", port))
    finally:
        for conn in conns:
            conn.close()
    assert sum(per_worker.values()) == 64 and set(per_worker) == workers
    # The kernel hashes each connection to a listener: 8 or fewer of 64 on one side would
    # happen about twice in ten billion runs; the shared socket gave 56/8 in a run.
    assert min(per_worker.values()) > 8, per_worker


def test_a_second_api_on_a_taken_address_fails_and_the_first_still_answers(
        api, stack_env, state_dir):
    port, proc = api
    log = state_dir / f"listeners-second-{port}.log"
    second = _gunicorn(stack_env, port, log)
    try:
        assert second.wait(timeout=30) != 0
    finally:
        if second.poll() is None:
            second.kill()
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in log.read_text()
    assert sorted(_owners("listening", port)) == sorted(_children(proc.pid))
    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
