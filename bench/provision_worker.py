"""The worker's provision in process vs docker-py ``containers.run``, with a trace of its calls.

The provision job's own code (``tasks.containers.provision``: claim, policy, pull check,
bind walk, create, guard, start, wait, final record) runs in this process on a job record
written straight into Redis, for bench/provision.py's container (busybox httpd, one
published port, a read-only bind mount, capped json-file logs), named, by an admin caller.
docker-py's ``containers.run`` starts the same container on the same engine; the two
alternate, the order rotating every round, and each container is removed untimed.

Figures: wall time and this process's CPU time per provision (medians, spread), the job's
own started_at → finished_at, and, from a traced round, every engine request and Redis
round trip of the worker's run with its duration (``--trace``).

    source .state/run/env
    DOCKYARD_REDIS_URL=redis://127.0.0.1:6379/11 DOCKYARD_STATE_DIR=/tmp/st-bench \\
        .venv/bin/python -m bench.provision_worker [--rounds 20] [--trace 3]

The Redis database is flushed first: give one nobody else uses. No API or worker process
is needed (nor started).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import redis
from docker.types import LogConfig, Mount

from bench.common import BENCH_LABEL, TEST_IMAGE, docker_host, machine_summary, table

PORT = 8080
TARGET = "/www"
COMMAND = ["httpd", "-f", "-p", str(PORT), "-h", TARGET]


class Trace:
    """Engine requests and Redis round trips (name, start offset, duration), this thread's."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float]] = []
        self.active = False
        self.origin = 0.0
        self._thread = threading.get_ident()

    def timed(self, name: str, call: Callable[[], Any]) -> Any:
        if not self.active or threading.get_ident() != self._thread:
            return call()
        started = time.perf_counter()
        try:
            return call()
        finally:
            ended = time.perf_counter()
            self.events.append((name, (started - self.origin) * 1000, (ended - started) * 1000))

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        self.events, self.active, self.origin = [], True, time.perf_counter()
        try:
            yield
        finally:
            self.active = False


def _install(trace: Trace, client: docker.DockerClient) -> None:
    api = client.api
    send = api.send

    def traced_send(request: Any, **kwargs: Any) -> Any:
        path = request.path_url.split("?", 1)[0]
        path = "/".join("<id>" if len(p) == 64 else p for p in path.split("/")[2:])
        return trace.timed(f"engine {request.method} /{path}", lambda: send(request, **kwargs))

    api.send = traced_send
    execute_command = redis.Redis.execute_command
    execute = redis.client.Pipeline.execute

    def traced_command(self: Any, *args: Any, **options: Any) -> Any:
        if isinstance(self, redis.client.Pipeline):
            return execute_command(self, *args, **options)
        return trace.timed(f"redis {args[0]}", lambda: execute_command(self, *args, **options))

    def traced_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        names = "+".join(str(c[0][0]) for c in self.command_stack)
        return trace.timed(f"redis pipeline {names}", lambda: execute(self, *args, **kwargs))

    redis.Redis.execute_command = traced_command  # type: ignore[method-assign]
    redis.client.Pipeline.execute = traced_execute  # type: ignore[method-assign]


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--trace", type=int, default=3, help="traced rounds after the timed ones")
    args = parser.parse_args()
    if "DOCKYARD_REDIS_URL" not in os.environ:
        sys.exit("set DOCKYARD_REDIS_URL to a Redis database nobody else uses")
    root = Path(tempfile.mkdtemp(prefix="dy-bench-binds-"))
    (root / "www").mkdir()
    (root / "www" / "index.html").write_text("dockyard bench\n")
    os.environ["DOCKYARD_BIND_ROOTS"] = str(root)

    from app.core.store import get_redis
    from app.core.task_names import CONTAINERS_PROVISION
    from app.engine import bind_check
    from app.runtime import runtime
    from app.security.auth import Principal
    from schemas.containers import ProvisionSpecSchema

    rt = runtime()
    rt.celery  # noqa: B018  (the default app, before tasks are imported)
    import tasks.containers as task_module
    from tasks.base import client_for

    get_redis().flushdb()
    rt.hosts.upsert("local", docker_host(), labels={"role": "local"})
    caller = Principal("bench", "bench", "admin", None).as_caller()
    sdk = docker.DockerClient(base_url=docker_host(), version="auto", timeout=60)
    trace = Trace()
    _install(trace, client_for("local"))

    def worker(name: str) -> str:
        spec = ProvisionSpecSchema().load({
            "image": TEST_IMAGE, "name": name, "command": COMMAND,
            "ports": [{"container_port": PORT, "host_ip": "127.0.0.1"}],
            "volumes": [{"source": str(root / "www"), "target": TARGET, "read_only": True,
                         "type": "bind"}],
            "labels": {BENCH_LABEL: "provision-worker"}})
        record = rt.jobs.new_record(CONTAINERS_PROVISION, "local", name, "bench", "bench",
                                    "engine.ops")
        pipe = get_redis().pipeline(transaction=False)
        rt.jobs.add_to_pipeline(pipe, record)
        pipe.execute()
        task_module.provision.run(record["id"], "local", spec, caller)
        job = rt.jobs.get(record["id"])
        if job["state"] != "succeeded":
            raise RuntimeError(f"provision failed: {job.get('error')}")
        run_ms = (_when(job["finished_at"]) - _when(job["started_at"])) * 1000
        phases.setdefault("worker run", []).append(run_ms)
        return job["result"]["id"]

    def docker_py(name: str) -> str:
        return sdk.containers.run(
            TEST_IMAGE, COMMAND, detach=True, name=name,
            ports={f"{PORT}/tcp": ("127.0.0.1", None)},
            mounts=[Mount(target=TARGET, source=str(root / "www"), type="bind", read_only=True)],
            labels={BENCH_LABEL: "provision-worker"},
            log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}),
        ).id

    methods = {"worker": worker, "docker-py": docker_py}
    wall: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    phases: dict[str, list[float]] = {}

    def one(key: str, keep: bool) -> None:
        name = f"dy-bench-pw-{key}-{uuid.uuid4().hex[:8]}"
        cpu0, wall0 = time.process_time(), time.perf_counter()
        container = methods[key](name)
        wall1, cpu1 = time.perf_counter(), time.process_time()
        sdk.api.remove_container(container, force=True)
        if keep:
            wall[key].append((wall1 - wall0) * 1000)
            cpu[key].append((cpu1 - cpu0) * 1000)
        time.sleep(0.1)

    try:
        for key in methods:
            one(key, keep=False)  # warm-up
        phases.clear()
        order = list(methods)
        for index in range(args.rounds):
            for key in order[index % 2:] + order[:index % 2]:
                one(key, keep=True)
        traced: list[list[tuple[str, float, float]]] = []
        for _ in range(args.trace):
            name = f"dy-bench-pw-trace-{uuid.uuid4().hex[:8]}"
            with trace.recording():
                container = worker(name)
            sdk.api.remove_container(container, force=True)
            traced.append(trace.events)
            time.sleep(0.1)
    finally:
        for row in sdk.api.containers(all=True,
                                      filters={"label": f"{BENCH_LABEL}=provision-worker"}):
            with contextlib.suppress(docker.errors.NotFound):
                sdk.api.remove_container(row["Id"], force=True)
        get_redis().flushdb()
        bind_check.remove_helpers(sdk, str(root))
        for path in sorted(root.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        root.rmdir()

    print(f"Machine: {machine_summary()}; load average {os.getloadavg()[0]:.2f} at the end.\n")
    rows = []
    for key in methods:
        w, c = wall[key], cpu[key]
        rows.append([key, len(w), f"{statistics.median(w):.1f}",
                     f"{min(w):.1f}-{max(w):.1f}", f"{statistics.median(c):.1f}"])
    rows.append(["worker: started_at → finished_at", len(phases["worker run"][1:]),
                 f"{statistics.median(phases['worker run'][1:]):.1f}", "", ""])
    print(table(["method", "n", "median wall ms", "wall range ms", "median CPU ms"], rows))
    ratio = statistics.median(wall["worker"]) / statistics.median(wall["docker-py"])
    paired = sorted(w / d for w, d in zip(wall["worker"], wall["docker-py"], strict=True))
    print(f"\nworker / docker-py: {ratio:.2f}x (medians); per round {statistics.median(paired):.2f}x "
          f"(median; quartiles {paired[len(paired) // 4]:.2f}-{paired[3 * len(paired) // 4]:.2f})\n")
    if traced:
        rows = []
        for number, events in enumerate(traced, 1):
            engine = [e for e in events if e[0].startswith("engine")]
            spent = [sum(e[2] for e in events if e[0].startswith(kind))
                     for kind in ("engine", "redis")]
            start = sum(e[2] for e in engine if e[0].endswith("/start"))
            rows.append([number, len(engine), f"{spent[0]:.1f}", f"{spent[0] - start:.1f}",
                         len(events) - len(engine), f"{spent[1]:.1f}"])
        print(table(["traced provision", "engine requests", "engine ms",
                     "engine ms but the start", "Redis round trips", "Redis ms"], rows))
        kinds: dict[str, list[list[float]]] = {}
        for number, events in enumerate(traced):
            for name, _, took in events:
                kinds.setdefault(name, [[] for _ in traced])[number].append(took)
        print("\nPer kind of call over the traced provisions (calls per provision, median ms of "
              "one call):\n")
        print(table(["call", "per provision", "median ms"], [
            [f"`{name[:90]}`", f"{statistics.median(len(r) for r in runs):g}",
             f"{statistics.median(t for r in runs for t in r):.1f}"]
            for name, runs in kinds.items()]))
        print("\nThe last traced provision, call by call (this thread's; the job record's own "
              "write comes first):\n")
        print(table(["call", "at ms", "took ms"],
                    [[f"`{n}`", f"{at:.1f}", f"{took:.1f}"] for n, at, took in traced[-1]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
