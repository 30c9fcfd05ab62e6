"""What WAIT on job creation costs: one job's creation with and without a replica's confirmation.

Starts its own primary and replica (``redis-server`` on free loopback ports, AOF off, in a
temporary folder; nothing shared is touched) and times, from one client thread, N job
creations each way, interleaved in rounds so drift hits all alike:

(a) before issue 18: the job script (record, index, first event), then ``send_task``;
(b) the job script pushing its own message (``broker_message``), no WAIT;
(c) as (b), then ``WAIT 1 1000`` on the same connection (the default with sentinels).

    python -m bench.wait_cost [--jobs 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import redis

from app.core.config import Settings
from app.jobs.celery import make_celery
from app.jobs.dispatch import lane_key
from app.jobs.handoff import Replication, broker_message
from app.jobs.records import JobStore


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server(folder: Path, port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(folder), "--save", "", "--appendonly", "no", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dy-wait-cost-") as tmp:
        primary_port, replica_port = _free_port(), _free_port()
        procs = [_server(Path(tmp), primary_port),
                 _server(Path(tmp), replica_port, "--replicaof", "127.0.0.1", str(primary_port))]
        try:
            replica = redis.Redis(port=replica_port, decode_responses=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if replica.info("replication").get("master_link_status") == "up":
                        break
                except redis.ConnectionError:
                    pass
                time.sleep(0.1)
            _run(primary_port, options.jobs, options.rounds)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


def _run(port: int, jobs: int, rounds: int) -> None:
    url = f"redis://127.0.0.1:{port}/0"
    celery = make_celery(Settings(redis_url=url, secret_key="bench-" + uuid.uuid4().hex))
    client = redis.Redis.from_url(url, decode_responses=True)
    store = JobStore(client, 3600)
    queue = "host.bench-wait.ops"
    client.zadd(lane_key(queue), {"bench": time.time() + 3600})
    waiting = Replication(1, 1000)

    def before() -> None:
        record = store.new_record("containers.action", "bench-wait", "x", "b", "b", queue)
        store.create(record, lane_key(queue), None)
        celery.send_task("containers.action", args=[record["id"], "bench-wait", "x", "stop",
                                                    {}, {}], queue=queue,
                         task_id=record["id"], argsrepr="", kwargsrepr="")

    def scripted(replication: Replication | None) -> None:
        store.replication = replication
        record = store.new_record("containers.action", "bench-wait", "x", "b", "b", queue)
        message = broker_message(celery, "containers.action",
                                 [record["id"], "bench-wait", "x", "stop", {}, {}], queue,
                                 record["id"])
        store.create(record, lane_key(queue), None, message)

    ways = {"(a) script + send_task": before,
            "(b) script pushes the message": lambda: scripted(None),
            "(c) (b) + WAIT 1": lambda: scripted(waiting)}
    for way in ways.values():  # warm: connections, script caches, Celery's producer
        for _ in range(50):
            way()
    times: dict[str, list[float]] = {name: [] for name in ways}
    per_round = max(1, jobs // rounds)
    for _ in range(rounds):
        for name, way in ways.items():
            for _ in range(per_round):
                began = time.perf_counter()
                way()
                times[name].append(time.perf_counter() - began)
            client.flushdb()
            client.zadd(lane_key(queue), {"bench": time.time() + 3600})
    print(f"{per_round * rounds} creations each way, one client, loopback primary + replica")
    print("| way | median | p99 | creations/s (one client) |")
    print("|---|---|---|---|")
    for name, values in times.items():
        values.sort()
        p99 = values[int(len(values) * 0.99) - 1]
        print(f"| {name} | {statistics.median(values) * 1000:.3f} ms | {p99 * 1000:.3f} ms | "
              f"{len(values) / sum(values):.0f} |")
    celery.close()


if __name__ == "__main__":
    main()
