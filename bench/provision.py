"""Provision end to end: Dockyard's API (`?wait=30`) vs docker-py vs the `docker run -d` CLI.

All three start the same container: busybox httpd, one port published on 127.0.0.1 (engine-
chosen host port), a read-only bind mount of /srv/dockyard/bench at /www, json-file logs
capped like Dockyard caps them. Rounds are interleaved and the order rotates every round, so
engine drift and warm-up hit the three methods alike. Each container is removed after it
was timed; the removal is not timed.

    python -m bench.provision [--rounds 20] [--unnamed] [--no-bind]

``--no-bind`` leaves the bind mount out (httpd serves / instead): what the API costs
without the worker's walk of a bind source (``app.engine.bind_check.resolve_binds``), for
telling that check's share of the ratio; its figure is recorded apart, not as the target.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import docker
import requests
from docker.types import LogConfig, Mount

from bench.common import (
    API_URL,
    BENCH_LABEL,
    TEST_IMAGE,
    Samples,
    admin_token,
    assert_loopback,
    docker_host,
    exit_on_sigterm,
    forget_audit,
    forget_jobs,
    interleaved_rounds,
    machine_summary,
    ms,
    overlap_note,
    percentile,
    ratio,
    table,
    verdict,
)
from bench.figures import record

BIND_SOURCE = Path(os.environ.get("DOCKYARD_BENCH_BIND", "/srv/dockyard/bench"))
TARGET = "/www"
PORT = 8080
COMMAND = ["httpd", "-f", "-p", str(PORT), "-h", TARGET]
LABEL_VALUE = "provision"


class Provisioner:
    def __init__(self, named: bool, bind: bool = True) -> None:
        self.named = named
        self.bind = bind
        self.command = COMMAND if bind else [*COMMAND[:-1], "/"]
        self.token = admin_token()
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {self.token}"
        self.docker = docker.DockerClient(base_url=docker_host(), version="auto", timeout=60)
        self.job_ids: list[str] = []
        # Per API provision: (created→started, started→finished, rest of the round trip), s.
        self.phases: list[tuple[float, float, float]] = []

    def name(self, method: str, index: str) -> str | None:
        return f"bench-prov-{method}-{index}-{os.getpid()}" if self.named else None

    # Each method returns the id of the running container it made.

    def api(self, name: str | None) -> str:
        spec = {
            "image": TEST_IMAGE, "name": name, "command": self.command,
            "ports": [{"container_port": PORT, "host_ip": "127.0.0.1"}],
            "labels": {BENCH_LABEL: LABEL_VALUE},
        }
        if self.bind:
            spec["volumes"] = [{"source": str(BIND_SOURCE), "target": TARGET,
                                "read_only": True, "type": "bind"}]
        sent = time.perf_counter()
        reply = self.http.post(f"{API_URL}/api/v1/hosts/local/containers", params={"wait": 30},
                               json=spec, timeout=60)
        total = time.perf_counter() - sent
        job = reply.json()
        if "id" in job and job.get("kind"):
            self.job_ids.append(job["id"])
        if reply.status_code != 200 or job.get("state") != "succeeded":
            raise RuntimeError(f"API provision failed: {reply.status_code} {job}")
        created, started, finished = (_when(job[k]) for k in ("created_at", "started_at",
                                                                "finished_at"))
        self.phases.append((started - created, finished - started, total - (finished - created)))
        return job["result"]["id"]

    def sdk(self, name: str | None) -> str:
        container = self.docker.containers.run(
            TEST_IMAGE, self.command, detach=True, name=name,
            ports={f"{PORT}/tcp": ("127.0.0.1", None)},
            mounts=[Mount(target=TARGET, source=str(BIND_SOURCE), type="bind", read_only=True)]
            if self.bind else [],
            labels={BENCH_LABEL: LABEL_VALUE},
            log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}),
        )
        return container.id

    def cli(self, name: str | None) -> str:
        argv = ["docker", "run", "-d"]
        if name:
            argv += ["--name", name]
        argv += ["-p", f"127.0.0.1::{PORT}"]
        if self.bind:
            argv += ["--mount", f"type=bind,source={BIND_SOURCE},target={TARGET},readonly"]
        argv += ["--label", f"{BENCH_LABEL}={LABEL_VALUE}",
                 "--log-driver", "json-file", "--log-opt", "max-size=10m", "--log-opt", "max-file=3",
                 TEST_IMAGE, *self.command]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"docker run failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def remove(self, container_id: str) -> None:
        self.docker.api.remove_container(container_id, force=True)

    def remove_leftovers(self) -> int:
        leftovers = self.docker.api.containers(all=True,
                                               filters={"label": f"{BENCH_LABEL}={LABEL_VALUE}"})
        for row in leftovers:
            with contextlib.suppress(docker.errors.NotFound):
                self.docker.api.remove_container(row["Id"], force=True)
        return len(leftovers)


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def prepare_bind_source() -> bool:
    """Create the bind source with a page to serve; True if this run created it."""
    created = not BIND_SOURCE.exists()
    BIND_SOURCE.mkdir(parents=True, exist_ok=True)
    (BIND_SOURCE / "index.html").write_text("dockyard bench\n")
    return created


def remove_bind_source() -> None:
    (BIND_SOURCE / "index.html").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        BIND_SOURCE.rmdir()


def run(rounds: int, named: bool, bind: bool = True) -> int:
    assert_loopback(API_URL)
    created_dir = prepare_bind_source()
    started = time.time()
    bench = Provisioner(named, bind)
    methods: dict[str, Callable[[str | None], str]] = {
        "api": bench.api, "sdk": bench.sdk, "cli": bench.cli}
    labels = {"api": "Dockyard API (?wait=30)", "sdk": "docker-py containers.run",
              "cli": "docker run -d (CLI)"}
    samples = {label: Samples(label) for label in methods}
    keys = list(methods)
    try:
        print("warm-up: one untimed provision per method", file=sys.stderr, flush=True)
        for key, fn in methods.items():
            bench.remove(fn(bench.name(key, "warm")))

        def one(key: str, attempt: int) -> float:
            name = bench.name(key, str(attempt))
            start = time.perf_counter()
            container_id = methods[key](name)
            elapsed = time.perf_counter() - start
            bench.remove(container_id)
            time.sleep(0.1)
            return elapsed

        log = interleaved_rounds(rounds, keys, one, samples)
    finally:
        left = bench.remove_leftovers()
        if left:
            print(f"removed {left} leftover benchmark container(s)", file=sys.stderr)
        forget_jobs(bench.job_ids)
        forget_audit(started - 5, [f'"{BENCH_LABEL}": "{LABEL_VALUE}"'])
        if created_dir:
            remove_bind_source()

    api, sdk, cli = (samples[k] for k in keys)
    print(f"### Provision: API vs docker-py vs CLI ({rounds} interleaved rounds, "
          f"{'named' if named else 'unnamed'} containers"
          f"{'' if bind else ', no bind mount'})\n")
    print(f"Machine: {machine_summary()}.\n")
    rows = []
    for key in keys:
        s = samples[key]
        rows.append([labels[key], len(s.values), ms(s.median), ms(s.pct(90)), ms(min(s.values)),
                     ms(max(s.values)), ratio(s.median, sdk.median)])
    print(table(["method", "n", "median ms", "p90 ms", "min ms", "max ms", "median / SDK"], rows))
    api_sdk = api.median / sdk.median
    api_cli = api.median / cli.median
    print()
    print(table(["ratio (medians)", "value", "target", "verdict"], [
        ["API / SDK", f"{api_sdk:.2f}x", "≤ 1.05x", verdict(api_sdk <= 1.05)],
        ["API / CLI", f"{api_cli:.2f}x", "< 1.00x", verdict(api_cli < 1.0)],
        ["API / SDK p90", ratio(api.pct(90), sdk.pct(90)), "", ""],
    ]))
    if bench.phases:
        timed = bench.phases[1:]  # every API provision but the warm-up
        print()
        print(table(["API provision, where the time goes (medians)", "ms"], [
            ["request accepted → a worker started the job (created_at → started_at)",
             ms(percentile([p[0] for p in timed], 50))],
            ["the worker's run: engine calls, progress, record (started_at → finished_at)",
             ms(percentile([p[1] for p in timed], 50))],
            ["the rest: HTTP, validation, name check, enqueue, wake-up of ?wait, reply",
             ms(percentile([p[2] for p in timed], 50))],
        ]))
    print(f"\n{overlap_note(log)}\n")
    # Without the bind mount the figure is a diagnosis beside the target's, with no verdict.
    record("provision" if bind else "provision_no_bind",
           f"provision{'' if bind else ' without a bind mount,'} API / docker-py "
           f"(median of {len(api.values)} interleaved rounds)", api_sdk, f"{api_sdk:.2f}x",
           "≤ 1.05x" if bind else "", api_sdk <= 1.05 if bind else None,
           "bench/provision.py" + ("" if bind else " --no-bind"))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (each method once)")
    parser.add_argument("--unnamed", action="store_true",
                        help="let the engine name the containers (skips the API's name check)")
    parser.add_argument("--no-bind", action="store_true",
                        help="leave the bind mount out (the worker's bind-source walk with it)")
    args = parser.parse_args()
    exit_on_sigterm()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return run(args.rounds, named=not args.unnamed, bind=not args.no_bind)


if __name__ == "__main__":
    sys.exit(main())
