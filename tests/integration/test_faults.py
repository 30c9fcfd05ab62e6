"""Fault injection on a private Redis and a private stack: nothing lost, nothing duplicated.

Every case here runs against its own redis-server (own port, own dir, AOF on), its own
API and workers, and, where an engine or a registry is stopped, its own engine (a dockerd
in a network namespace) or its own registry: the shared services other sessions use are
never stopped. The SIGKILLed worker mid-provision lives in test_provision.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest
import redis
import requests

from app.jobs.dispatch import lane_key
from app.jobs.records import HOST_INDEX, events_key, job_key
from tests.integration.conftest import ADMIN_TOKEN, Api
from tests.integration.helpers import BUSYBOX, containers_of_job, eventually, free_port
from tests.support.remote_engine import RemoteEngine, start_on_a_free_subnet
from tests.support.stack import Stack

UNREACHABLE_ENGINE = "tcp://127.0.0.1:1"
FINAL = ("succeeded", "failed", "cancelled")


class PrivateRedis:
    """A redis-server of our own on a free port, appending every write to its AOF."""

    def __init__(self, folder: Path, password: bool = True) -> None:
        self.folder = folder
        self.port = free_port()
        self.password = uuid.uuid4().hex if password else ""
        self.password_file = folder / "password"
        # ``stack_url`` for Dockyard's processes (the password comes from the file, as in
        # `make run`); ``url`` carries it, for the test's own clients.
        self.stack_url = f"redis://127.0.0.1:{self.port}/0"
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0" if password \
            else self.stack_url
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.password_file.write_text(self.password)
        self.password_file.chmod(0o600)
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 (lives with the process)
        self.proc = subprocess.Popen(
            ["redis-server", "-", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.folder), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--maxmemory-policy", "noeviction", "--protected-mode", "yes"],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if self.password:
            self.proc.stdin.write(f'requirepass "{self.password}"\n'.encode())
        self.proc.stdin.close()
        client = redis.Redis.from_url(self.url)
        eventually(lambda: _pings(client), timeout=20)

    def crash(self) -> None:
        """SIGKILL: no shutdown save, only what the AOF already holds survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


def private_stack_env(stack_env: dict[str, str], store: PrivateRedis, folder: Path,
                      local_engine: str, **extra: str) -> dict[str, str]:
    """The suite's environment, re-pointed at a private Redis and state dir.

    Host ``local`` of that stack is ``local_engine``; no registry is registered.
    """
    env = {key: value for key, value in stack_env.items() if key not in (
        "DOCKYARD_LOCAL_REGISTRY", "DOCKYARD_DEV_OPEN_REDIS", "DOCKYARD_REDIS_PASSWORD_FILE")}
    if store.password:
        env["DOCKYARD_REDIS_PASSWORD_FILE"] = str(store.password_file)
    env.update({"DOCKYARD_REDIS_URL": store.stack_url, "DOCKYARD_STATE_DIR": str(folder),
                "DOCKYARD_LOCAL_ENGINE": local_engine,
                "DOCKYARD_BIND_ROOTS": str(folder / "binds"), **extra})
    (folder / "binds").mkdir(parents=True, exist_ok=True)
    return env


@contextlib.contextmanager
def private_stack(stack_env: dict[str, str], folder: Path, local_engine: str,
                  **extra: str) -> Iterator[tuple[Stack, PrivateRedis]]:
    store = PrivateRedis(folder / "redis")
    store.start()
    running = Stack(private_stack_env(stack_env, store, folder, local_engine, **extra),
                    folder / "log")
    try:
        running.start()
        yield running, store
    finally:
        running.stop()
        store.stop()


class ThrottledRelay:
    """A TCP relay to a registry that passes client bytes at ``rate`` bytes/s, so a push lasts.

    ``close()`` drops the listener and every open connection at once.
    """

    def __init__(self, target: tuple[str, int], rate: int) -> None:
        self.target = target
        self.rate = rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, throttled: bool) -> None:
        with contextlib.suppress(OSError):
            while not self.closed.is_set():
                data = source.recv(16384)
                if not data:
                    break
                sink.sendall(data)
                if throttled:
                    time.sleep(len(data) / self.rate)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.closed.set()
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.close()


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faults(stack_env: dict[str, str], state_dir: Path) -> Iterator[tuple[Stack, PrivateRedis]]:
    """A private stack whose host `local` is the shared engine (reached read-mostly)."""
    with private_stack(stack_env, state_dir / "faults", stack_env["DOCKER_HOST"],
                       DOCKYARD_ENGINE_TIMEOUT_SECONDS="5") as running:
        yield running


@pytest.fixture(scope="module")
def fadmin(faults: tuple[Stack, PrivateRedis]) -> Api:
    return Api(faults[0].url, ADMIN_TOKEN)


@pytest.fixture(scope="module")
def fredis(faults: tuple[Stack, PrivateRedis]) -> redis.Redis:
    return redis.Redis.from_url(faults[1].url, decode_responses=True)


def _states(client: redis.Redis, job_ids: list[str]) -> list[str | None]:
    pipe = client.pipeline(transaction=False)
    for job_id, host in zip(job_ids, client.hmget(HOST_INDEX, job_ids), strict=True):
        pipe.hget(job_key(job_id, host), "state")
    return pipe.execute()


def _state_events(client: redis.Redis, job_id: str) -> list[str]:
    return [json.loads(fields["data"])["state"]
            for _, fields in client.xrange(events_key(job_id, client.hget(HOST_INDEX, job_id)))
            if fields["type"] == "state"]


def _wait_final(client: redis.Redis, job_ids: list[str], timeout: float) -> list[str | None]:
    return eventually(lambda: (lambda s: s if all(x in FINAL for x in s) else None)(
        _states(client, job_ids)), timeout=timeout, interval=0.5)


# -- Redis restarted with jobs queued ----------------------------------------------------------


def test_redis_crash_with_jobs_queued_answers_503_then_runs_each_job_once(
        faults, fadmin: Api, fredis: redis.Redis, engine: docker.DockerClient, unique: str):
    running, store = faults
    running.stop_process("worker-ops")
    # A live lane with nobody consuming it: jobs are accepted and wait in the queue.
    fredis.zadd(lane_key("engine.ops"), {"paused": time.time() + 600})
    names = [f"{unique}-{i}" for i in range(8)]
    job_ids = []
    try:
        for name in names:
            response = fadmin.post("/hosts/local/containers", json={
                "image": BUSYBOX, "name": name, "command": ["sleep", "60"], "start": False,
                "pull": "never"})
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["id"])
        assert fredis.llen("engine.ops") == len(names)

        store.crash()
        down = {path: fadmin.request(method, path, json=body) for method, path, body in (
            ("GET", "/jobs", None), ("GET", f"/jobs/{job_ids[0]}", None), ("GET", "/hosts", None),
            ("GET", "/hosts/local/containers", None), ("GET", "/audit", None),
            ("POST", "/hosts/local/containers", {"image": BUSYBOX, "name": f"{unique}-x"}))}
        ready = requests.get(f"{running.url}/readyz", timeout=10)
        store.start()

        assert {path: r.status_code for path, r in down.items()} == dict.fromkeys(down, 503)
        assert all(r.headers["Content-Type"] == "application/problem+json" for r in down.values())
        assert all(r.headers["Retry-After"] == "5" for r in down.values())
        assert ready.status_code == 503
        assert _states(fredis, job_ids) == ["queued"] * len(names)
        assert fredis.llen("engine.ops") == len(names)
        fredis.zrem(lane_key("engine.ops"), "paused")
        running.start_worker("worker-ops", "engine.ops", "prefork", 2)

        assert _wait_final(fredis, job_ids, timeout=90) == ["succeeded"] * len(names)
        for job_id, name in zip(job_ids, names, strict=True):
            assert _state_events(fredis, job_id) == ["queued", "running", "succeeded"]
            assert [c.name for c in containers_of_job(engine, job_id)] == [name]
        assert fredis.llen("engine.ops") == 0
    finally:
        for name in names:
            with contextlib.suppress(docker.errors.NotFound):
                engine.containers.get(name).remove(force=True)


# -- 2,000 jobs in a burst ---------------------------------------------------------------------


def test_burst_of_2000_jobs_all_reach_a_final_state_once(faults, fadmin: Api,
                                                          fredis: redis.Redis):
    # A host where no engine listens: each job fails at once with 503 and touches no engine.
    created = fadmin.post("/hosts", json={"name": "void", "url": UNREACHABLE_ENGINE})
    assert created.status_code == 201, created.text
    local = threading.local()

    def submit(i: int) -> tuple[int, str | None]:
        if not hasattr(local, "api"):
            local.api = Api(faults[0].url, ADMIN_TOKEN)
        response = local.api.post(f"/hosts/void/containers/burst-{i}/start")
        return response.status_code, (response.json().get("id")
                                      if response.status_code == 202 else None)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(submit, range(2000)))
    assert [code for code, _ in answers] == [202] * 2000
    job_ids = [job_id for _, job_id in answers]
    assert len(set(job_ids)) == 2000

    states = _wait_final(fredis, job_ids, timeout=240)
    assert set(states) == {"failed"}
    pipe = fredis.pipeline(transaction=False)
    for job_id, host in zip(job_ids, fredis.hmget(HOST_INDEX, job_ids), strict=True):
        pipe.xrange(events_key(job_id, host))
    for job_id, events in zip(job_ids, pipe.execute(), strict=True):
        finals = [e for _, e in events if e["type"] == "state"
                  and json.loads(e["data"])["state"] in FINAL]
        assert len(finals) == 1, job_id
    sample = fadmin.get(f"/jobs/{job_ids[-1]}").json()
    assert sample["error"]["status"] == 503 and "void" in sample["error"]["detail"]
    assert fredis.llen("engine.ops") == 0


# -- the Docker engine stopped during a job ----------------------------------------------------


@pytest.fixture(scope="module")
def stoppable_engine(state_dir: Path, engine: docker.DockerClient) -> Iterator[RemoteEngine]:
    # Another session may run this module at the same time: a namespace name of our own and
    # the first free /30 of 10.213.30-39.
    remote = start_on_a_free_subnet(f"flt{os.getpid() % 100000}", state_dir, range(30, 40))
    try:
        remote.load_image_from(engine, BUSYBOX)
        yield remote
    finally:
        remote.stop()


def _kill_dockerd(remote: RemoteEngine) -> None:
    # Only dockerd dies (SIGKILL, like a crash); its containerd, namespace and certs stay,
    # so the engine comes back at the same address with the same identity.
    pid = int(remote.dockerd_pidfile.read_text())
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: not Path(f"/proc/{pid}").exists() or
               "zombie" in Path(f"/proc/{pid}/status").read_text(), timeout=10)


def test_engine_stopped_mid_job_fails_naming_the_host_reads_503_then_both_recover(
        faults, fadmin: Api, fredis: redis.Redis, stoppable_engine: RemoteEngine, unique: str):
    host = "flt-tls"
    created = fadmin.post("/hosts", json={
        "name": host, "url": stoppable_engine.url,
        "tls": {"ca_cert": stoppable_engine.ca_pem, "client_cert": stoppable_engine.client_cert_pem,
                "client_key": stoppable_engine.client_key_pem}})
    assert created.status_code == 201, created.text
    spec = {"image": BUSYBOX, "name": unique,
            "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
            "healthcheck": {"test": ["false"], "interval": "30s", "retries": 3},
            "wait_for": "healthy", "wait_timeout": 120}
    response = fadmin.post(f"/hosts/{host}/containers", json=spec)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    eventually(lambda: fadmin.get(f"/jobs/{job_id}").json()["state"] == "running", timeout=30)
    eventually(lambda: stoppable_engine.client().containers.list(
        filters={"label": f"dockyard.job={job_id}"}), timeout=30)

    _kill_dockerd(stoppable_engine)
    try:
        job = fadmin.wait_job(job_id, timeout=60)
        read = fadmin.get(f"/hosts/{host}/containers")
        info = fadmin.get(f"/hosts/{host}/info")
    finally:
        stoppable_engine._start_dockerd(time.monotonic() + 60)
    assert job["state"] == "failed", job
    assert host in job["error"]["detail"] and job["error"]["status"] in (502, 503), job["error"]
    assert _state_events(fredis, job_id) == ["queued", "running", "failed"]
    for answer in (read, info):
        assert answer.status_code == 503, answer.text
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert host in answer.json()["detail"]

    assert eventually(lambda: fadmin.get(f"/hosts/{host}/containers").status_code == 200,
                      timeout=30)
    # The job could not clean up while the engine was gone: what it made is at most one
    # container, and the retry below replaces it.
    assert len(stoppable_engine.client().containers.list(
        all=True, filters={"label": f"dockyard.job={job_id}"})) <= 1
    retry = fadmin.post(f"/hosts/{host}/containers", params={"wait": 60}, json={
        **spec, "command": ["sleep", "300"], "healthcheck": None, "wait_for": "running",
        "replace": True}).json()
    assert retry["state"] == "succeeded", retry
    same_name = stoppable_engine.client().containers.list(all=True,
                                                         filters={"name": f"^/{unique}$"})
    assert [c.id for c in same_name] == [retry["result"]["id"]]
    assert stoppable_engine.client().containers.list(
        all=True, filters={"label": f"dockyard.job={job_id}"}) == []



# -- the registry stopped during a push --------------------------------------------------------


@pytest.fixture
def private_registry(state_dir: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    folder = state_dir / f"faults-registry-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    port = free_port()
    (folder / "config.yml").write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {folder}/data}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(folder / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    eventually(lambda: _answers(f"http://127.0.0.1:{port}/v2/"), timeout=20)
    yield proc, port
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _big_image(engine: docker.DockerClient, repository: str, size: int) -> str:
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w") as tar:
        info = tarfile.TarInfo("blob")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    engine.api.import_image_from_data(payload.getvalue(), repository=repository, tag="1")
    return f"{repository}:1"


def test_registry_stopped_mid_push_fails_the_job_with_the_reason(
        faults, fadmin: Api, engine: docker.DockerClient, private_registry, unique: str):
    proc, port = private_registry
    relay = ThrottledRelay(("127.0.0.1", port), rate=2 << 20)
    ref = _big_image(engine, f"127.0.0.1:{relay.port}/faults/{unique}", 24 << 20)
    try:
        response = fadmin.post(f"/hosts/local/images/{ref}/push", json={})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        eventually(lambda: "Pushing" in str(fadmin.get(f"/jobs/{job_id}").json()["progress"]),
                   timeout=30)
        proc.terminate()
        proc.wait(10)
        relay.close()
        job = fadmin.wait_job(job_id, timeout=120)
    finally:
        relay.close()
        with contextlib.suppress(docker.errors.ImageNotFound):
            engine.images.remove(ref, force=True)
    assert job["state"] == "failed", job
    assert job["error"]["status"] in (502, 503), job["error"]
    assert f"127.0.0.1:{relay.port}" in job["error"]["detail"], job["error"]
    assert job["result"] is None


# -- Redis is never open --------------------------------------------------------------------


def test_readyz_fails_while_redis_answers_without_a_password(stack_env, state_dir):
    folder = state_dir / f"open-redis-{uuid.uuid4().hex[:6]}"
    store = PrivateRedis(folder / "redis", password=False)
    store.start()
    running = Stack(private_stack_env(stack_env, store, folder, stack_env["DOCKER_HOST"]),
                    folder / "log")
    try:
        with pytest.raises(RuntimeError, match="stack not ready"):
            running.start()  # it waits for readyz, which never says ready
        answer = requests.get(f"{running.url}/readyz", timeout=10)
        assert answer.status_code == 503
        assert answer.json()["checks"]["redis_auth"] is False
        assert "without authentication" in answer.json()["reason"]
        # `make run` reusing a loopback Redis without a password says so: then it is ready.
        running.stop()
        dev = Stack(private_stack_env(stack_env, store, folder, stack_env["DOCKER_HOST"],
                                      DOCKYARD_DEV_OPEN_REDIS="1"), folder / "log-dev")
        try:
            dev.start()
            assert requests.get(f"{dev.url}/readyz", timeout=10).json()["checks"][
                "redis_auth"] is False
        finally:
            dev.stop()
    finally:
        running.stop()
        store.stop()


def test_readyz_is_ready_with_a_password_protected_redis(fadmin, faults):
    running, store = faults
    answer = requests.get(f"{running.url}/readyz", timeout=10)
    assert answer.status_code == 200 and answer.json()["checks"]["redis_auth"] is True
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(store.stack_url).ping()
