"""Listing 200 containers: Dockyard's API vs docker-py (sparse) vs `docker ps -a`.

Creates and starts 200 busybox `sleep 3600` containers labelled ``bench.dockyard=list``,
times each method in interleaved rounds (order rotated per round), and always removes the
200 containers at the end.

    python -m bench.list [--containers 200] [--rounds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import docker
import requests

from bench.common import (
    API_URL,
    BENCH_LABEL,
    TEST_IMAGE,
    Samples,
    admin_token,
    assert_loopback,
    docker_host,
    exit_on_sigterm,
    interleaved_rounds,
    machine_summary,
    ms,
    overlap_note,
    ratio,
    table,
    verdict,
)
from bench.figures import record

LABEL_VALUE = "list"


def create_fleet(client: docker.DockerClient, count: int) -> None:
    def make(index: int) -> None:
        created = client.api.create_container(
            TEST_IMAGE, ["sleep", "3600"], name=f"bench-list-{index}-{os.getpid()}",
            labels={BENCH_LABEL: LABEL_VALUE})
        client.api.start(created["Id"])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(make, range(count)))


def remove_fleet(client: docker.DockerClient) -> int:
    rows = client.api.containers(all=True, filters={"label": f"{BENCH_LABEL}={LABEL_VALUE}"})

    def drop(container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(container_id, force=True)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(drop, [row["Id"] for row in rows]))
    return len(rows)


def run(count: int, rounds: int) -> int:
    assert_loopback(API_URL)
    client = docker.DockerClient(base_url=docker_host(), version="auto", timeout=120)
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {admin_token()}"
    seen: dict[str, int] = {}

    def api() -> int:
        reply = http.get(f"{API_URL}/api/v1/hosts/local/containers", params={"all": "true"},
                         timeout=30)
        if reply.status_code != 200:
            raise RuntimeError(f"API list failed: {reply.status_code} {reply.text[:300]}")
        return len(reply.json())

    def sdk() -> int:
        return len(client.containers.list(all=True, sparse=True))

    def cli() -> int:
        done = subprocess.run(["docker", "ps", "-a"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"docker ps failed: {done.stderr.strip()}")
        return done.stdout.count("\n") - 1  # minus the header line

    methods: dict[str, Callable[[], int]] = {"api": api, "sdk": sdk, "cli": cli}
    labels = {"api": "Dockyard API GET …/containers?all=true",
              "sdk": "docker-py containers.list(all=True, sparse=True)", "cli": "docker ps -a (CLI)"}
    samples = {key: Samples(key) for key in methods}
    try:
        started = time.monotonic()
        print(f"creating and starting {count} containers (not timed)", file=sys.stderr, flush=True)
        create_fleet(client, count)
        print(f"  done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        for fn in methods.values():  # warm-up, untimed
            fn()

        def one(key: str, _attempt: int) -> float:
            start = time.perf_counter()
            seen[key] = methods[key]()
            elapsed = time.perf_counter() - start
            time.sleep(0.05)
            return elapsed

        log = interleaved_rounds(rounds, list(methods), one, samples)
    finally:
        started = time.monotonic()
        removed = remove_fleet(client)
        print(f"removed {removed} benchmark containers in {time.monotonic() - started:.1f} s",
              file=sys.stderr, flush=True)

    api_s, sdk_s, cli_s = (samples[k] for k in methods)
    print(f"### List: API vs docker-py vs CLI ({count} benchmark containers running, "
          f"{rounds} interleaved rounds)\n")
    print(f"Machine: {machine_summary()}.\n")
    rows = [[labels[k], len(samples[k].values), seen.get(k, "?"), ms(samples[k].median),
             ms(samples[k].pct(90)), ms(min(samples[k].values)), ms(max(samples[k].values)),
             ratio(samples[k].median, cli_s.median)] for k in methods]
    print(table(["method", "n", "rows listed", "median ms", "p90 ms", "min ms", "max ms",
                 "median / CLI"], rows))
    api_cli = api_s.median / cli_s.median
    print()
    print(table(["ratio (medians)", "value", "target", "verdict"], [
        ["API / docker ps -a", f"{api_cli:.2f}x", "≤ 2.00x", verdict(api_cli <= 2.0)],
        ["API / docker-py", ratio(api_s.median, sdk_s.median), "", ""],
    ]))
    print(f"\n{overlap_note(log)}\n")
    record("list", f"list {count}: API / `docker ps -a` (medians)", api_cli, f"{api_cli:.2f}x",
           "≤ 2.00x", api_cli <= 2.0, "bench/list.py")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    exit_on_sigterm()
    return run(args.containers, args.rounds)


if __name__ == "__main__":
    sys.exit(main())
