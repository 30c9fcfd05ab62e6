"""60 provisions spread over two hosts with 4 worker slots, vs a bare docker-py pool of 4.

Host A is the local engine; host B is a second dockerd in a network namespace reached over
mutual TLS (tests/support/remote_engine.py). Dockyard runs a private stack (its own Redis
database and state folder) with 4 ops worker processes; all 60 jobs are submitted at
once and the clock stops when the last one is final. The bare reference runs the same 60
`containers.run(detach=True)` calls from a thread pool of 4 over the same two engines.

Run: `source .state/run/env && .venv/bin/python -m bench.fleet`
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import requests

from bench.common import ROOT, TEST_IMAGE, docker_host, machine_summary, table, wait_quiet
from tests.support.remote_engine import RemoteEngine
from tests.support.stack import Stack

TOTAL = int(os.environ.get("DOCKYARD_BENCH_FLEET_N", "60"))
ROUNDS = int(os.environ.get("DOCKYARD_BENCH_FLEET_ROUNDS", "3"))
SLOTS = 4
LABEL = "bench.dockyard"  # dockyard.* labels are reserved for Dockyard


def spec(name: str) -> dict:
    return {"image": TEST_IMAGE, "name": name, "command": ["sleep", "600"],
            "labels": {LABEL: "fleet"}}


def api_round(url: str, token: str, hosts: list[str]) -> float:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    started = time.perf_counter()
    jobs = []
    for index in range(TOTAL):
        host = hosts[index % len(hosts)]
        response = session.post(f"{url}/api/v1/hosts/{host}/containers",
                                json=spec(f"fl-{uuid.uuid4().hex[:8]}"), timeout=30)
        response.raise_for_status()
        jobs.append(response.json()["id"])
    for job_id in jobs:
        job = session.get(f"{url}/api/v1/jobs/{job_id}", params={"wait": 60}, timeout=90).json()
        assert job["state"] == "succeeded", job
    return time.perf_counter() - started


def bare_round(clients: list[docker.DockerClient]) -> float:
    def one(index: int) -> None:
        client = clients[index % len(clients)]
        client.containers.run(TEST_IMAGE, ["sleep", "600"], name=f"fb-{uuid.uuid4().hex[:8]}",
                              detach=True, labels={LABEL: "fleet"})

    started = time.perf_counter()
    with ThreadPoolExecutor(SLOTS) as pool:
        list(pool.map(one, range(TOTAL)))
    return time.perf_counter() - started


def clean(clients: list[docker.DockerClient]) -> None:
    for client in clients:
        for container in client.containers.list(all=True, filters={"label": f"{LABEL}=fleet"}):
            container.remove(force=True)


def main() -> None:
    state = ROOT / ".state" / "bench-fleet"
    state.mkdir(parents=True, exist_ok=True)
    local = docker.DockerClient(base_url=docker_host(), max_pool_size=SLOTS)
    remote = RemoteEngine("bfleet", state, subnet_index=41)
    token = "dy_bench-" + uuid.uuid4().hex
    env = {**os.environ, "DOCKYARD_REDIS_URL": "redis://127.0.0.1:6379/2",
           "DOCKYARD_STATE_DIR": str(state), "DOCKYARD_SECRET_KEY": uuid.uuid4().hex,
           "DOCKYARD_ADMIN_TOKEN": token, "DOCKYARD_LOCAL_ENGINE": docker_host()}
    import redis

    from bench.common import with_redis_password

    redis.Redis.from_url(with_redis_password(env["DOCKYARD_REDIS_URL"])).flushdb()
    stack = Stack(env, Path(state) / "log")
    remote.start()
    try:
        remote.load_image_from(local, TEST_IMAGE)
        remote_client = remote.client()
        stack.start(ops_concurrency=SLOTS)
        response = requests.post(f"{stack.url}/api/v1/hosts", timeout=30, headers={
            "Authorization": f"Bearer {token}"}, json={
            "name": "bench-remote", "url": remote.url,
            "tls": {"ca_cert": remote.ca_pem, "client_cert": remote.client_cert_pem,
                    "client_key": remote.client_key_pem}})
        response.raise_for_status()
        clients = [local, remote_client]
        api_times, bare_times = [], []
        for _ in range(ROUNDS):
            wait_quiet()
            api_times.append(api_round(stack.url, token, ["local", "bench-remote"]))
            clean(clients)
            wait_quiet()
            bare_times.append(bare_round(clients))
            clean(clients)
        api_rate = TOTAL / statistics.median(api_times)
        bare_rate = TOTAL / statistics.median(bare_times)
        print(machine_summary())
        print(table(["path", "median wall (s)", "provisions/s", "runs"], [
            ["Dockyard API, 4 ops slots", f"{statistics.median(api_times):.2f}",
             f"{api_rate:.1f}", ", ".join(f"{t:.2f}" for t in api_times)],
            ["bare docker-py pool of 4", f"{statistics.median(bare_times):.2f}",
             f"{bare_rate:.1f}", ", ".join(f"{t:.2f}" for t in bare_times)],
        ]))
        print(f"\nthroughput ratio API/bare: {api_rate / bare_rate:.2f} (target >= 0.8)")
    finally:
        stack.stop()
        clean([local])
        remote.stop()


if __name__ == "__main__":
    main()
