"""Redis Sentinel: Dockyard finds the primary through real sentinels and follows a failover.

A primary, a replica and three sentinels (``redis-server --sentinel``), all with a
password, on loopback ports of their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from app.core.config import Settings, SettingsError
from app.core.store import broker_url_and_options, redis_client
from tests.integration.conftest import ADMIN_TOKEN, Api
from tests.integration.helpers import BUSYBOX, containers_of_job, eventually, free_port
from tests.integration.test_faults import PrivateRedis, private_stack_env
from tests.support.stack import Stack

MASTER = "dy-ha"


class SentinelSet:
    """A password-protected primary, one replica and three sentinels watching them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.password = uuid.uuid4().hex
        self.password_file = folder / "password"
        self.data_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def sentinels(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def _spawn(self, port: int, config: str, *extra: str) -> None:
        path = self.folder / f"{port}.conf"
        path.write_text(config)
        log = open(self.folder / f"{port}.log", "ab")  # noqa: SIM115 (lives with the process)
        self.procs[port] = subprocess.Popen(["redis-server", str(path), *extra], stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.password_file.write_text(self.password)
        primary, replica = self.data_ports
        common = (f'bind 127.0.0.1\nprotected-mode yes\nrequirepass "{self.password}"\n'
                  f'masterauth "{self.password}"\nsave ""\nappendonly no\n')
        self._spawn(primary, f"port {primary}\ndir {self.folder}\n{common}")
        self._spawn(replica, f"port {replica}\ndir {self.folder}\n{common}"
                             f"replicaof 127.0.0.1 {primary}\n")
        for port in self.sentinel_ports:
            self._spawn(port, f"port {port}\nbind 127.0.0.1\ndir {self.folder}\n"
                              f'requirepass "{self.password}"\n'
                              f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n"
                              f'sentinel auth-pass {MASTER} "{self.password}"\n'
                              f"sentinel down-after-milliseconds {MASTER} 1000\n"
                              f"sentinel failover-timeout {MASTER} 5000\n", "--sentinel")
        client = redis.Redis(port=replica, password=self.password)
        eventually(lambda: _answers(lambda: client.info("replication")["master_link_status"]
                                    == "up"), timeout=30)
        # Every sentinel must know the others *and the replica* before a test kills the
        # primary: a sentinel learns of replicas only from the primary's INFO, and with none
        # known there is nothing to promote (the failover would never come).
        for port in self.sentinel_ports:
            sentinel = redis.Redis(port=port, password=self.password)
            eventually(lambda sentinel=sentinel: _answers(
                lambda: (master := sentinel.sentinel_master(MASTER))["num-other-sentinels"] == 2
                and master["num-slaves"] == 1), timeout=30)

    def kill_primary(self) -> int:
        """SIGKILL whichever data server is the primary now; its port."""
        sentinel = redis.Redis(port=self.sentinel_ports[0], password=self.password,
                               decode_responses=True)
        port = int(sentinel.sentinel_get_master_addr_by_name(MASTER)[1])
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait(10)
        return port

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


def _answers(check) -> bool:
    try:
        return bool(check())
    except (redis.ConnectionError, redis.ResponseError, KeyError):
        return False


@pytest.fixture
def ha(state_dir: Path) -> Iterator[SentinelSet]:
    """A fresh set per test: a test that kills the primary leaves no replica behind."""
    servers = SentinelSet(state_dir / f"ha-{uuid.uuid4().hex[:6]}")
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


def _settings(ha: SentinelSet, master: str = MASTER) -> Settings:
    return Settings(redis_url="redis://127.0.0.1/3", redis_password=ha.password,
                    redis_sentinels=tuple(ha.sentinels.split(",")), redis_master=master)


def test_stores_follow_the_primary_through_a_failover(ha: SentinelSet) -> None:
    client = redis_client(_settings(ha), socket_timeout=2)
    key = f"dyt-ha-{uuid.uuid4().hex}"
    client.set(key, "before")
    assert client.wait(1, 2000) == 1  # on the replica before the primary dies
    old = ha.kill_primary()
    started = time.monotonic()

    def written() -> bool:
        try:
            return bool(client.set(key + "-after", "after"))
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
            return False

    eventually(written, timeout=30, interval=0.2)
    recovered = time.monotonic() - started
    assert client.get(key) == "before"
    new = client.connection_pool.get_master_address()[1]
    assert new != old
    print(f"writes recovered {recovered:.1f} s after the primary was killed")


def test_a_wrong_master_name_or_dead_sentinels_say_so_and_never_fall_back(ha: SentinelSet,
                                                                         tmp_path: Path) -> None:
    with pytest.raises(redis.sentinel.MasterNotFoundError, match="no-such-master"):
        redis_client(_settings(ha, "no-such-master")).ping()
    dead = Settings(redis_url="redis://127.0.0.1/3", redis_password=ha.password,
                    redis_sentinels=(f"127.0.0.1:{free_port()}",), redis_master=MASTER)
    with pytest.raises(redis.ConnectionError):
        redis_client(dead).ping()
    with pytest.raises(SettingsError, match="DOCKYARD_REDIS_MASTER"):
        Settings(redis_sentinels=("127.0.0.1:26379",), redis_master="")
    url, options = broker_url_and_options(_settings(ha))
    assert url.count("sentinel://") == 3 and options["master_name"] == MASTER


def test_api_and_workers_run_on_sentinels_and_serve_after_a_failover(
        ha: SentinelSet, stack_env: dict[str, str], state_dir: Path, engine, unique) -> None:
    folder = state_dir / f"ha-stack-{unique}"
    store = PrivateRedis(folder / "unused")  # only for the environment's shape
    env = private_stack_env(stack_env, store, folder, stack_env["DOCKER_HOST"])
    env.update({"DOCKYARD_REDIS_URL": "redis://127.0.0.1/0",
                "DOCKYARD_REDIS_PASSWORD_FILE": str(ha.password_file),
                "DOCKYARD_REDIS_SENTINELS": ha.sentinels, "DOCKYARD_REDIS_MASTER": MASTER})
    running = Stack(env, folder / "log")
    names = []
    try:
        running.start()
        api = Api(running.url, ADMIN_TOKEN)

        def provision(name: str) -> dict:
            names.append(name)
            response = api.post("/hosts/local/containers", params={"wait": 60}, json={
                "image": BUSYBOX, "name": name, "command": ["sleep", "120"]},
                headers={"Idempotency-Key": name})
            assert response.status_code in (200, 202), response.text
            return response.json()

        first = provision(f"{unique}-a")
        assert first.get("state") == "succeeded", first
        ha.kill_primary()
        # Requests during the failover answer 503 (never 500); after it the same
        # Idempotency-Key returns one job, and the engine holds one container per job.
        deadline = time.monotonic() + 60
        second: dict = {}
        while time.monotonic() < deadline and second.get("state") != "succeeded":
            response = api.post("/hosts/local/containers", params={"wait": 60}, json={
                "image": BUSYBOX, "name": f"{unique}-b", "command": ["sleep", "120"]},
                headers={"Idempotency-Key": f"{unique}-b"})
            assert response.status_code in (200, 202, 503), response.text
            if response.status_code == 503:
                assert response.headers["Retry-After"] == "5", response.headers
            second = response.json() if response.status_code != 503 else {}
            if response.status_code == 503:
                time.sleep(0.5)
        names.append(f"{unique}-b")
        assert second.get("state") == "succeeded", second
        for job in (first, second):
            assert len(containers_of_job(engine, job["id"])) == 1
        assert api.get(f"/jobs/{first['id']}").json()["state"] == "succeeded"
        assert requests.get(f"{running.url}/readyz", timeout=10).status_code == 200
    finally:
        running.stop()
        for name in names:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False,
                           env=os.environ)
