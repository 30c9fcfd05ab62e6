"""Large streams through Dockyard with a flat memory profile: `docker cp` out and `docker save`.

A container holds a 256 MiB file and an image has a 256 MiB layer. Each is downloaded
through the API (worker → Redis pipe → API → client) and with the docker CLI on the same
engine; while the API download runs, the resident memory (VmRSS) of the API's gunicorn
workers, the query worker and Redis is sampled every 20 ms. Reported: throughput of both
paths and each process's peak RSS above its baseline.

Run: `source .state/run/env && .venv/bin/python -m bench.streams` (the stack of `make run`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from pathlib import Path

import docker
import requests

from bench.common import (
    API_URL,
    ROOT,
    TEST_IMAGE,
    admin_token,
    assert_loopback,
    docker_host,
    machine_summary,
    table,
    wait_quiet,
)

SIZE_MIB = int(os.environ.get("DOCKYARD_BENCH_STREAM_MIB", "256"))
NAME = "dy-bench-streams"


def pids_of(pidfile: Path, children: bool) -> list[int]:
    master = int(pidfile.read_text())
    if not children:
        return [master]
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RssSampler:
    """Peak VmRSS of each watched process while a transfer runs."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.baseline = {n: max(rss_kib(p) for p in pids) for n, pids in groups.items()}
        self.peak = dict(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for name, pids in self.groups.items():
                self.peak[name] = max(self.peak[name], *(rss_kib(p) for p in pids))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed_download(url: str, params: dict, headers: dict) -> tuple[float, int]:
    started = time.perf_counter()
    size = 0
    with requests.get(url, params=params, headers=headers, stream=True, timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_content(1 << 20):
            size += len(chunk)
    return time.perf_counter() - started, size


def timed_cli(args: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    with subprocess.Popen(["docker", *args], stdout=subprocess.PIPE) as proc:
        size = 0
        while chunk := proc.stdout.read(1 << 20):
            size += len(chunk)
    return time.perf_counter() - started, size


def main() -> None:
    assert_loopback(API_URL)
    token = admin_token()
    headers = {"Authorization": f"Bearer {token}"}
    client = docker.DockerClient(base_url=docker_host())
    run = ROOT / ".state" / "run"
    groups = {"api (gunicorn workers)": pids_of(run / "api.pid", children=True),
              "query worker": pids_of(run / "worker-query.pid", children=False),
              "redis": [int(subprocess.run(["pgrep", "-x", "redis-server"], capture_output=True,
                                           text=True).stdout.split()[0])]}
    container = client.containers.run(TEST_IMAGE, ["sh", "-c", f"dd if=/dev/urandom of=/big bs=1M "
                                                   f"count={SIZE_MIB} 2>/dev/null; sleep 3600"],
                                      name=NAME, detach=True, labels={"dockyard.bench": "streams"})
    image_ref = f"dy-bench/streams:{SIZE_MIB}"
    try:
        while container.exec_run(["sh", "-c", f"test $(stat -c %s /big) -eq {SIZE_MIB << 20}"]
                                 ).exit_code:
            time.sleep(0.5)
        container.commit(repository="dy-bench/streams", tag=str(SIZE_MIB))
        rows = []
        for label, api_path, params, cli_args in (
                (f"cp out {SIZE_MIB} MiB file", f"/api/v1/hosts/local/containers/{NAME}/archive",
                 {"path": "/big"}, ["cp", f"{NAME}:/big", "-"]),
                (f"save image with {SIZE_MIB} MiB layer", "/api/v1/hosts/local/images/save",
                 {"ref": image_ref}, ["save", image_ref])):
            wait_quiet()
            cli_seconds, cli_size = timed_cli(cli_args)
            with RssSampler(groups) as sampler:
                api_seconds, api_size = timed_download(API_URL + api_path, params, headers)
            growth = {n: (sampler.peak[n] - sampler.baseline[n]) / 1024 for n in groups}
            rows.append([label, f"{api_size / 2**20:.0f} MiB",
                         f"{api_size / 2**20 / api_seconds:.0f} MiB/s",
                         f"{cli_size / 2**20 / cli_seconds:.0f} MiB/s",
                         f"{(api_size / api_seconds) / (cli_size / cli_seconds):.2f}x",
                         *(f"+{growth[n]:.1f} MiB (peak {sampler.peak[n] / 1024:.0f})"
                           for n in groups)])
        print(machine_summary())
        print(table(["transfer", "bytes", "API", "docker CLI", "API/CLI",
                     *(f"peak RSS growth: {n}" for n in groups)], rows))
    finally:
        container.remove(force=True)
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(image_ref)


if __name__ == "__main__":
    main()
